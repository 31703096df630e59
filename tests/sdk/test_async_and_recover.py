"""The asyncio API and journal recovery, against the in-process fake ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.journal import Journal
from clients.sdk import AsyncLedgerSDK, LedgerSDK, SdkConfig
from clients.sdk_errors import PermissionDeniedError
from clients.sdk_types import PreparedTransfer, RetryPolicy
from ledger.codec import encode_transfer, u128_bytes
from ledger.types import Result
from tests.sdk.fakes import FakeLedger, Step
from tests.sdk.test_faults_fake import assert_exactly_once, transfers

FAST = RetryPolicy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=10)


def test_async_session_back_pressure_and_results(fake: FakeLedger) -> None:
    fake.release.clear()
    fake.then(*[Step("hold")] * 50)
    ts = transfers(60)

    async def main() -> None:
        cfg = SdkConfig(batch_size_max=10, batch_delay_s=0.01, window_items=20)
        async with AsyncLedgerSDK([fake.target], retry=FAST, config=cfg) as sdk:
            async with sdk.session() as s:
                futs = [await s.send(t) for t in ts[:20]]
                assert s.unacknowledged == 20
                blocked = asyncio.ensure_future(s.send(ts[20]))
                await asyncio.sleep(0.2)
                assert not blocked.done()  # awaits while the window is full
                fake.release.set()
                futs.append(await asyncio.wait_for(blocked, 5))
                futs += [await s.send(t) for t in ts[21:]]
                await s.flush()
                assert s.unacknowledged == 0
            outs = [f.result() for f in futs]
            assert [o.transfer_id for o in outs] == [t.id for t in ts]
            assert all(o.result == Result.OK for o in outs)
            assert len(await sdk.lookup_transfers([t.id for t in ts])) == 60

    asyncio.run(main())
    assert_exactly_once(fake, ts)


def test_async_submit(fake: FakeLedger) -> None:
    async def main() -> list[Result]:
        async with AsyncLedgerSDK(fake.target, retry=FAST) as sdk:
            return [o.result for o in await sdk.submit(transfers(7))]

    assert asyncio.run(main()) == [Result.OK] * 7


def test_journal_records_before_send_and_settles_after(fake: FakeLedger, tmp_path: Path) -> None:
    ts = transfers(30)
    with LedgerSDK(fake.target, retry=FAST, journal=str(tmp_path / "j.db")) as sdk:
        outs = sdk.submit(ts)
        assert sdk.journal is not None
        assert sdk.journal.counts() == {"pending": 0, "done": 30, "refused": 0}
        e = sdk.journal.get(ts[3].id)
        assert e is not None and e.record == encode_transfer(ts[3]) and e.log_index == outs[3].log_index
    # a refused batch is journaled as refused, so recover() never sends it later
    fake.then(Step("status", code=__import__("grpc").StatusCode.PERMISSION_DENIED, message="nope"))
    with LedgerSDK(fake.target, retry=FAST, journal=str(tmp_path / "j.db")) as sdk:
        with pytest.raises(PermissionDeniedError):
            sdk.submit(transfers(2))
        assert sdk.journal is not None
        assert sdk.journal.counts()["refused"] == 2
        assert sdk.recover() == []


def test_recover_resends_unresolved_entries_exactly_once(fake: FakeLedger, tmp_path: Path) -> None:
    ts = transfers(40)
    prepared = [PreparedTransfer(t.id, encode_transfer(t)) for t in ts]
    # a crashed PSP: everything journaled, the first half had reached the ledger before the crash
    with Journal(tmp_path / "j.db") as j:
        j.record_pending(prepared)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        sdk.submit(ts[:20])
    with LedgerSDK(fake.target, retry=FAST, journal=str(tmp_path / "j.db")) as sdk:
        outs = sdk.recover()
        assert len(outs) == 40 and all(o.result == Result.OK for o in outs)
        assert {o.resolution for o in outs[:20]} == {"resend_exists"}
        assert {o.resolution for o in outs[20:]} == {"recovered"}
        assert sdk.recover() == []
    with Journal(tmp_path / "j.db") as j:
        assert j.counts() == {"pending": 0, "done": 40, "refused": 0}
    assert all(fake.commits[u128_bytes(t.id)] == 1 for t in ts)
