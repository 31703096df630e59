"""The bulk path: columns → packed canonical records → outcome arrays, under the same faults as the
per-object API (scripted fake ledger), with the journal's one-row-per-batch recovery."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import sdk_errors as E
from clients.ids import IdGenerator, id_time_ms
from clients.journal import Journal
from clients.psp.columns import TRANSFER_DTYPE, encode_transfers, id_columns, transfer_ids
from clients.psp.outcomes import NO_RESULT
from clients.sdk import AsyncLedgerSDK, LedgerSDK, SdkConfig
from clients.sdk_types import RetryPolicy
from clients.workload import ColumnarPayments, micro_amounts
from ledger.codec import TRANSFER_SIZE, encode_transfer, u128_bytes
from ledger.types import Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from tests.sdk.fakes import FakeLedger, Step

FAST = RetryPolicy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=10)
SHORT_DEADLINE = RetryPolicy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=1.0)
UNAV = grpc.StatusCode.UNAVAILABLE


def records(n: int, seed: int = 3) -> bytes:
    return ColumnarPayments(50, seed=seed).records(n)


def assert_exactly_once(fake: FakeLedger, recs: bytes) -> None:
    ids = transfer_ids(recs)
    assert all(fake.commits[u128_bytes(i)] == 1 for i in ids)
    assert all(n == 1 for n in fake.commits.values()) and len(fake.commits) >= len(ids)


# -- encoding from columns -----------------------------------------------------------------------------


def test_columns_encode_byte_identical_to_the_codec() -> None:
    n = 300
    rng = np.random.default_rng(1)
    first = (0x1234 << 80) | ((1 << 64) - 150)  # the block crosses a 64-bit word boundary: carry
    lo, hi = id_columns(first, n)
    debit, credit = rng.integers(1, 1 << 40, n), rng.integers(1, 1 << 40, n)
    amount, psp = micro_amounts(rng, n), rng.integers(0, 1 << 32, n)
    packed = encode_transfers(id_lo=lo, id_hi=hi, debit_account_id=debit, credit_account_id=credit, amount=amount,
                              ledger=840, code=7, psp_id=psp, flags=0, timeout_s=0, user_data=99)
    objects = [Transfer(id=first + i, debit_account_id=int(debit[i]), credit_account_id=int(credit[i]),
                        amount=int(amount[i]), ledger=840, code=7, psp_id=int(psp[i]), user_data=99)
               for i in range(n)]
    assert packed == b"".join(encode_transfer(t) for t in objects)
    assert transfer_ids(packed) == [first + i for i in range(n)]
    assert TRANSFER_DTYPE.itemsize == TRANSFER_SIZE


@pytest.mark.parametrize(("field", "value"), [("ledger", 1 << 32), ("code", 1 << 16), ("amount", -1),
                                              ("psp_id", [1, 2])])
def test_columns_refuse_values_out_of_range(field: str, value: object) -> None:
    cols: dict[str, object] = {"id_lo": np.arange(3, dtype=np.uint64), "debit_account_id": 1,
                               "credit_account_id": 2, "amount": 5, "ledger": 840, "code": 1}
    cols[field] = value
    with pytest.raises(ValueError, match=field):
        encode_transfers(**cols)  # type: ignore[arg-type]


def test_a_psps_own_accounts_use_the_high_word() -> None:
    from ledger.ownership import account_id_for

    first = account_id_for(7, 1)
    recs = ColumnarPayments(10, first_account_id=first, psp_id=7, seed=2).records(50)
    rec = np.frombuffer(recs, dtype=TRANSFER_DTYPE)
    debits = [lo | hi << 64 for lo, hi in rec["debit_account_id"].tolist()]
    assert all(first <= d < first + 10 for d in debits) and set(rec["psp_id"].tolist()) == {7}


def test_reserved_id_blocks_are_consecutive_unique_and_stay_monotonic() -> None:
    clock = itertools.chain([1000, 1000, 1000], itertools.repeat(1001))
    g = IdGenerator(lambda: next(clock))
    a = g.new()
    block = g.reserve(1000)
    b = g.new()
    assert a < block and block + 999 < b
    assert id_time_ms(block) == id_time_ms(block + 999) == 1000
    with pytest.raises(ValueError):
        g.reserve(0)


def test_micro_amounts_follow_the_mix() -> None:
    a = micro_amounts(np.random.default_rng(5), 20_000)
    assert a.min() >= 1 and a.max() <= 2000
    assert 0.65 < (a < 100).mean() < 0.75 and 0.02 < (a >= 500).mean() < 0.08


# -- submit_records ------------------------------------------------------------------------------------


def test_submit_records_gives_outcome_arrays(fake: FakeLedger) -> None:
    recs = records(2500)
    cfg = SdkConfig(batch_size_max=1000)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk:
        out = sdk.submit_records(recs)
        again = sdk.submit_records(recs[: 10 * TRANSFER_SIZE])  # an identical retry by the caller
    assert fake.batch_sizes == [1000, 1000, 500, 10]
    assert len(out) == 2500 and out.ok.all() and not out.errors
    assert sorted(out.log_indexes.tolist()) == list(range(2500))
    assert out.outcome(7).transfer_id == transfer_ids(recs)[7] and out.outcome(7).resolution == "response"
    assert [o.result for o in again.outcomes()] == [Result.TRANSFER_EXISTS] * 10
    assert again.log_indexes.tolist() == out.log_indexes[:10].tolist()
    assert_exactly_once(fake, recs)


def test_bulk_broken_stream_after_commit_is_resolved_by_lookup(fake: FakeLedger) -> None:
    fake.then(Step("commit_then_abort", UNAV, "connection reset"))
    recs = records(10)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit_records(recs)
    assert out.ok.all() and {o.resolution for o in out.outcomes()} == {"lookup"}
    assert fake.batch_sizes == [10]
    assert_exactly_once(fake, recs)


def test_bulk_broken_stream_before_commit_resends_the_same_ids(fake: FakeLedger) -> None:
    fake.then(Step("abort", UNAV, "connection reset"))
    recs = records(10)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit_records(recs)
    assert out.ok.all() and out.attempts.tolist() == [2] * 10
    assert fake.batch_sizes == [10, 10]
    assert_exactly_once(fake, recs)


def test_bulk_late_commit_makes_the_resend_exists_which_is_success(fake: FakeLedger) -> None:
    fake.then(Step("abort_commit_later", UNAV, "connection reset"))
    recs = records(6)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit_records(recs)
    assert out.results.tolist() == [0] * 6 and {o.resolution for o in out.outcomes()} == {"resend_exists"}
    assert_exactly_once(fake, recs)


def test_bulk_follows_the_leader_hint(fake: FakeLedger, fake2: FakeLedger) -> None:
    fake.then(*[Step("status", UNAV, "not leader", fake2.target, reason=pb.REASON_NOT_LEADER)] * 3)
    recs = records(5)
    with LedgerSDK([fake.target], retry=FAST) as sdk:
        assert sdk.submit_records(recs).ok.all()
        assert sdk.router_leader == fake2.target
    assert not fake.commits
    assert_exactly_once(fake2, recs)


def test_bulk_refusal_is_typed_and_arrays_say_which_rows(fake: FakeLedger) -> None:
    fake.then(Step("status", grpc.StatusCode.RESOURCE_EXHAUSTED, "store full", reason=pb.REASON_STORE_FULL))
    recs = records(20)
    cfg = SdkConfig(batch_size_max=10)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk:
        out = sdk.submit_records(recs, raise_errors=False)
        with pytest.raises(E.StoreFullError):
            out.raise_for_errors()
    assert out.results[:10].tolist() == [NO_RESULT] * 10 and out.ok[10:].all()
    ((rows, err),) = out.errors
    assert rows.tolist() == list(range(10)) and isinstance(err, E.StoreFullError)
    assert isinstance(out.error(3), E.StoreFullError) and out.error(12) is None


def test_bulk_region_unreachable_during_resolution_is_unknown_not_failed(fake: FakeLedger) -> None:
    # lookups refused for longer than the retry deadline (lookups retry until it, whatever the count)
    fake.then(Step("abort", UNAV, "reset"), *[Step("lookup_status", UNAV, "down")] * 100_000)
    with LedgerSDK(fake.target, retry=SHORT_DEADLINE) as sdk, pytest.raises(E.OutcomeUnknownError) as info:
        sdk.submit_records(records(4))
    assert len(info.value.transfer_ids) == 4


def test_session_mixes_objects_and_bulk_buffers_in_one_window(fake: FakeLedger) -> None:
    cfg = SdkConfig(batch_size_max=100, batch_delay_s=0.01, window_items=300)
    recs = records(250)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk, sdk.session() as s:
        one = s.send(Transfer(id=transfer_ids(records(1, seed=9))[0], debit_account_id=1, credit_account_id=2,
                              amount=3, ledger=840, code=1))
        bulk = s.send_records(recs)
        assert s.unacknowledged == 251 and s.sent == 251
        s.flush(5)
        assert s.unacknowledged == 0 and s.acked == 251
        assert one.result().ok and bulk.result().ok.all()
    assert sorted(fake.batch_sizes) == [1, 50, 100, 100]
    assert_exactly_once(fake, recs)


def test_async_session_send_records(fake: FakeLedger) -> None:
    recs = records(30)

    async def main() -> list[int]:
        async with AsyncLedgerSDK(fake.target, retry=FAST) as sdk, sdk.session() as s:
            fut = await s.send_records(recs)
            await s.flush()
            return (await fut).results.tolist()

    assert asyncio.run(main()) == [0] * 30


# -- journal: one row per batch ------------------------------------------------------------------------


def test_bulk_journal_is_one_row_per_batch_and_settled_after(fake: FakeLedger, tmp_path: Path) -> None:
    recs = records(250)
    cfg = SdkConfig(batch_size_max=100)
    with LedgerSDK(fake.target, retry=FAST, config=cfg, journal=str(tmp_path / "j.db")) as sdk:
        out = sdk.submit_records(recs)
    with Journal(tmp_path / "j.db") as j:
        assert j.counts() == {"pending": 0, "done": 250, "refused": 0}
        rows = j._db.execute("SELECT count(*), sum(length(records)) FROM batches").fetchone()
        assert rows == (3, 250 * TRANSFER_SIZE)
        e = j.get(transfer_ids(recs)[120])
        assert e is not None and e.log_index == int(out.log_indexes[120]) and e.record == recs[120 * 176 : 121 * 176]


def test_recover_resends_a_crashed_bulk_batch_exactly_once(fake: FakeLedger, tmp_path: Path) -> None:
    recs = records(40)
    # a crashed PSP: the batch journaled, its first half had reached the ledger before the crash
    with Journal(tmp_path / "j.db") as j:
        j.record_batch(recs)
        assert j.counts()["pending"] == 40
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        sdk.submit_records(recs[: 20 * TRANSFER_SIZE])
    with LedgerSDK(fake.target, retry=FAST, journal=str(tmp_path / "j.db")) as sdk:
        outs = sdk.recover()
        assert len(outs) == 40 and all(o.result == Result.OK for o in outs)
        assert {o.resolution for o in outs[:20]} == {"resend_exists"}
        assert {o.resolution for o in outs[20:]} == {"recovered"}
        assert sdk.recover() == []
    with Journal(tmp_path / "j.db") as j:
        assert j.counts() == {"pending": 0, "done": 40, "refused": 0}
        assert j.pending_batches() == []
    assert_exactly_once(fake, recs)


def test_journal_keeps_sign_group_and_upgrades_an_older_file(tmp_path: Path) -> None:
    import sqlite3

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # a batches table from before group signing
        db.execute("CREATE TABLE batches (key INTEGER PRIMARY KEY, records BLOB NOT NULL, signatures BLOB NOT NULL, "
                   "key_id BLOB NOT NULL, state INTEGER NOT NULL, outcomes BLOB, created_ns INTEGER NOT NULL, "
                   "resolved_ns INTEGER)")
        db.execute("INSERT INTO batches VALUES (1, ?, ?, ?, 0, NULL, 1, NULL)", (records(2), bytes(128), b"kid1"))
    recs = records(40)
    with Journal(old) as j:
        assert [(b.key, b.sign_group) for b in j.pending_batches()] == [(1, 0)]
        key = j.record_batch(recs, bytes(3 * 64), b"kid1", 16)
        assert [(b.key, b.sign_group, len(b.signatures)) for b in j.pending_batches()] == [(1, 0, 128),
                                                                                          (key, 16, 192)]
        assert {e.signature for e in j.unresolved()[2:]} == {b""}  # a group signature is no payment's own
        with pytest.raises(ValueError):
            j.record_batch(recs, bytes(40 * 64), b"kid1", 16)


def test_a_refused_bulk_batch_is_journaled_refused_and_never_recovered(fake: FakeLedger, tmp_path: Path) -> None:
    fake.then(Step("status", grpc.StatusCode.PERMISSION_DENIED, "nope", reason=pb.REASON_PERMISSION_DENIED))
    with LedgerSDK(fake.target, retry=FAST, journal=str(tmp_path / "j.db")) as sdk:
        with pytest.raises(E.PermissionDeniedError):
            sdk.submit_records(records(3))
        assert sdk.journal is not None and sdk.journal.counts() == {"pending": 0, "done": 0, "refused": 3}
        assert sdk.recover() == []
    assert not fake.commits


def test_an_unknown_bulk_outcome_stays_pending_in_the_journal(fake: FakeLedger, tmp_path: Path) -> None:
    fake.then(Step("abort", UNAV, "reset"), *[Step("lookup_status", UNAV, "down")] * 100_000)
    with LedgerSDK(fake.target, retry=SHORT_DEADLINE, journal=str(tmp_path / "j.db")) as sdk:
        with pytest.raises(E.OutcomeUnknownError):
            sdk.submit_records(records(4))
        assert sdk.journal is not None and sdk.journal.counts()["pending"] == 4
        with fake.lock:
            fake.script.clear()  # lookups answered again
        outs = sdk.recover()  # the region is back: settled with the same ids
        assert [o.result for o in outs] == [Result.OK] * 4
        assert sdk.journal.counts() == {"pending": 0, "done": 4, "refused": 0}
