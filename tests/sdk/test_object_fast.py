"""The per-object API's cheap parts: ``encode_transfer_fast`` (byte-identical to the codec) and
``PaymentFuture`` (a real ``concurrent.futures.Future`` completed lazily, a batch under one lock);
and the re-signing of a group-signed batch that lost rows to a lookup."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.psp.columns import encode_transfer_fast
from clients.psp.durable import JournalWriter, Preparer
from clients.psp.futures import PaymentFuture, settle_futures
from clients.psp.outcomes import HOW_LOOKUP, HOW_RESPONSE, Columns, ObjectSink, Origin
from clients.psp.window import Batch
from clients.sdk import LedgerSDK, SdkConfig
from ledger.codec import TRANSFER_SIZE, EncodingError, encode_transfer
from ledger.note import Signer
from ledger.psp_group import group_messages
from ledger.types import EventKind, Result, Transfer
from tests.sdk.fakes import FakeLedger

U128 = st.integers(0, 2**128 - 1)
U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 2**16 - 1)


@settings(max_examples=300, deadline=None)
@given(U128, U128, U128, U128, U32, U16, U16, U128, U32, U128, U32, st.binary(max_size=32),
       st.sampled_from([b"", bytes(range(32))]))
def test_fast_encoder_is_byte_identical(tid: int, dr: int, cr: int, amount: int, ledger: int, code: int, flags: int,
                                        pending: int, timeout: int, ud: int, psp: int, ext: bytes, pii: bytes) -> None:
    t = Transfer(id=tid, debit_account_id=dr, credit_account_id=cr, amount=amount, ledger=ledger, code=code,
                 flags=flags, pending_id=pending, timeout_s=timeout, user_data=ud, psp_id=psp, external_ref=ext,
                 pii_commitment=pii)
    assert encode_transfer_fast(t) == encode_transfer(t)


@pytest.mark.parametrize("field,value", [("id", -1), ("id", 2**128), ("amount", 2**128), ("ledger", 2**32),
                                         ("code", 2**16), ("psp_id", -1), ("external_ref", bytes(33)),
                                         ("pii_commitment", bytes(5))])
def test_fast_encoder_raises_the_codec_s_error(field: str, value: object) -> None:
    kw: dict[str, object] = dict(id=1, debit_account_id=1, credit_account_id=2, amount=1, ledger=840, code=1)
    kw[field] = value
    t = Transfer(**kw)  # type: ignore[arg-type]
    with pytest.raises(EncodingError) as fast:
        encode_transfer_fast(t)
    with pytest.raises(EncodingError) as slow:
        encode_transfer(t)
    assert str(fast.value) == str(slow.value)


def cols(n: int, how: int = HOW_RESPONSE) -> Columns:
    return Columns(np.arange(n, dtype=np.int64), np.zeros(n, np.uint32), np.arange(10, 10 + n, dtype=np.uint64),
                   np.full(n, 3, np.uint64), np.full(n, 77, np.uint64), np.full(n, how, np.uint8), 2)


def test_payment_futures_complete_lazily_and_work_with_concurrent_futures_helpers() -> None:
    cond = threading.Condition()
    futs = [PaymentFuture(cond, 100 + i) for i in range(5)]
    seen: list[int] = []
    futs[1].add_done_callback(lambda f: seen.append(f.result().transfer_id))
    assert futs[4].cancel()
    with pytest.raises(concurrent.futures.TimeoutError):
        futs[0].result(timeout=0.01)
    waiter = threading.Thread(target=lambda: concurrent.futures.wait(futs[:4]))
    waiter.start()
    settle_futures(futs, list(range(5)), cols(5, HOW_LOOKUP))
    waiter.join(5)
    assert not waiter.is_alive()
    o = futs[2].result(timeout=0)
    assert (o.transfer_id, o.result, o.log_index, o.block, o.timestamp_ns, o.attempts, o.resolution) == \
        (102, Result.OK, 12, 3, 77, 2, "lookup")
    assert type(o.log_index) is int and o.ok and futs[2].result() is o  # built once
    assert seen == [101]
    assert futs[4].cancelled() and all(f.done() for f in futs)
    assert list(concurrent.futures.as_completed(futs[:4], timeout=1)) and futs[0].exception() is None
    late: list[bool] = []
    futs[3].add_done_callback(lambda f: late.append(f.done()))  # already done: runs at once
    assert late == [True]


def test_a_wake_up_for_another_payment_does_not_end_a_wait() -> None:
    cond = threading.Condition()
    a, b = PaymentFuture(cond, 1), PaymentFuture(cond, 2)
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(b.exception(timeout=5)))
    t.start()
    time.sleep(0.05)
    settle_futures([a], [0], cols(1))  # notifies the shared condition
    time.sleep(0.05)
    assert t.is_alive() and not out and a.done() and not b.done()
    b(RuntimeError("boom"))  # the per-payment deliver path: an exception
    t.join(5)
    assert len(out) == 1 and isinstance(out[0], RuntimeError) and b.exception() is out[0]
    with pytest.raises(RuntimeError):
        b.result()


def test_object_sink_uses_the_lazy_path_only_for_payment_futures() -> None:
    cond = threading.Condition()
    futs = [PaymentFuture(cond, i) for i in range(3)]
    progress: list[int] = []
    sink = ObjectSink([0, 1, 2], list(futs), progress.append, settle_futures)
    origin = Origin(sink, 0, 3)
    origin.settle(cols(2))
    assert progress == [2] and futs[1].result(timeout=0).log_index == 11 and not futs[2].done()


def test_session_send_futures_against_a_ledger(fake: FakeLedger) -> None:
    with LedgerSDK(fake.target, config=SdkConfig(batch_size_max=100)) as sdk, sdk.session() as s:
        futs = [s.send(Transfer(id=1000 + i, debit_account_id=1, credit_account_id=2, amount=1, ledger=840, code=1))
                for i in range(250)]
        done, pending = concurrent.futures.wait(futs, timeout=30)
        assert not pending and {f.result().transfer_id for f in done} == set(range(1000, 1250))
        assert sorted(f.result().log_index for f in futs) == list(range(250))


def test_a_group_signed_batch_that_lost_rows_is_signed_anew() -> None:
    psp = Signer.generate("acme-psp")
    recs = b"".join(encode_transfer(Transfer(id=i + 1, debit_account_id=1, credit_account_id=2, amount=1,
                                             ledger=840, code=1)) for i in range(40))

    async def run() -> Batch:
        prep = Preparer(psp, JournalWriter(None, False), sign_group=16)
        b = Batch.of(EventKind.CREATE_TRANSFER, recs, Origin(ObjectSink([], []), 0, 40))
        await prep(b)
        assert b.sign_group == 16 and len(b.signatures) == 3 * 64
        mask = np.ones(40, dtype=np.bool_)
        mask[[0, 5, 39]] = False  # committed (found by lookup): the rest is sent again
        b.keep(mask)
        assert not b.signed and not b.signatures
        await prep(b)
        prep.close()
        return b

    b = asyncio.run(run())
    assert len(b.records) == 37 * TRANSFER_SIZE and b.sign_group == 16 and len(b.signatures) == 3 * 64
    msgs = group_messages(EventKind.CREATE_TRANSFER, b.records, TRANSFER_SIZE, 16)
    assert all(psp.verifier.verify(m, b.signatures[k * 64 : (k + 1) * 64]) for k, m in enumerate(msgs))
