"""SDK behaviour under faults, against a scriptable in-process fake of the Ledger service.

Deterministic: each test scripts what the fake does with the next batches (refuse, abort the stream
after or before committing, hold the answer) and checks the SDK's typed errors, retries, leader
following, indeterminate-outcome resolution (never a failure, never a duplicate) and back-pressure.
"""

from __future__ import annotations

import time

import grpc
import pytest

from clients import sdk_errors as E
from clients.ids import new_id
from clients.sdk import LedgerSDK, SdkConfig
from clients.sdk_types import RetryPolicy
from ledger.codec import u128_bytes
from ledger.types import Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from tests.integration.nodeproc import free_port
from tests.sdk.fakes import FakeLedger, ManualClock, Step

FAST = RetryPolicy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=10)
UNAV = grpc.StatusCode.UNAVAILABLE


def transfers(n: int) -> list[Transfer]:
    return [Transfer(id=new_id(), debit_account_id=1, credit_account_id=2, amount=1 + i, ledger=840, code=1)
            for i in range(n)]


def assert_exactly_once(fake: FakeLedger, ts: list[Transfer]) -> None:
    for t in ts:
        assert fake.commits[u128_bytes(t.id)] == 1, t.id
    assert all(n == 1 for n in fake.commits.values())


# -- typed errors -----------------------------------------------------------------------------------------

REFUSALS = [
    (grpc.StatusCode.INVALID_ARGUMENT, "malformed request: records is 5 bytes", pb.REASON_MALFORMED,
     E.InvalidBatchError),
    (grpc.StatusCode.PERMISSION_DENIED, "PSP signature of record #0 does not verify", pb.REASON_PERMISSION_DENIED,
     E.PermissionDeniedError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "store full (map full); the node refuses new work", pb.REASON_STORE_FULL,
     E.StoreFullError),
    (grpc.StatusCode.FAILED_PRECONDITION, "refused", pb.REASON_REFUSED, E.PreconditionFailedError),
    (grpc.StatusCode.UNAUTHENTICATED, "who are you", pb.REASON_UNSPECIFIED, E.UnauthenticatedError),
    (grpc.StatusCode.INTERNAL, "internal error", pb.REASON_INTERNAL, E.InternalError),
]


@pytest.mark.parametrize(("code", "message", "reason", "cls"), REFUSALS, ids=lambda x: getattr(x, "name", None))
def test_batch_status_refusal_raises_typed_error_without_retry(fake: FakeLedger, code: grpc.StatusCode,
                                                                message: str, reason: int,
                                                                cls: type[Exception]) -> None:
    fake.then(Step("status", code, message, reason=reason))
    with LedgerSDK(fake.target, retry=FAST) as sdk, pytest.raises(cls) as info:
        sdk.submit(transfers(3))
    assert message in str(info.value)
    assert fake.batch_sizes == [3]  # not retried
    assert not fake.commits


RETRIED = [
    (grpc.StatusCode.UNAVAILABLE, "this node is not the region's leader: no leader is known yet",
     pb.REASON_NOT_LEADER, E.NotLeaderError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "ingest queue full", pb.REASON_OVERLOADED, E.OverloadedError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "slow", pb.REASON_TIMEOUT, E.DeadlineExceededError),
    (grpc.StatusCode.UNAVAILABLE, "shutting down", pb.REASON_UNSPECIFIED, E.UnavailableError),
]


@pytest.mark.parametrize(("code", "message", "reason", "cls"), RETRIED, ids=lambda x: getattr(x, "name", None))
def test_retryable_refusals_are_retried_then_succeed(fake: FakeLedger, code: grpc.StatusCode, message: str,
                                                     reason: int, cls: type[Exception]) -> None:
    fake.then(Step("status", code, message, reason=reason), Step("status", code, message, reason=reason))
    ts = transfers(4)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert [o.result for o in out] == [Result.OK] * 4
    assert all(o.attempts == 3 for o in out)
    assert fake.batch_sizes == [4, 4, 4]
    assert_exactly_once(fake, ts)


@pytest.mark.parametrize(("code", "message", "reason", "cls"), RETRIED, ids=lambda x: getattr(x, "name", None))
def test_retry_budget_is_bounded_and_raises_typed_error(fake: FakeLedger, code: grpc.StatusCode, message: str,
                                                        reason: int, cls: type[Exception]) -> None:
    fake.then(*[Step("status", code, message, reason=reason)] * 10)
    with LedgerSDK(fake.target, retry=FAST, clock=ManualClock()) as sdk, pytest.raises(cls):
        sdk.submit(transfers(2))
    assert len(fake.batch_sizes) == FAST.max_attempts


def test_retry_deadline_is_measured_on_the_injected_clock(fake: FakeLedger) -> None:
    # every clock read moves time 1 s on (a few reads per attempt): the 10 s deadline, not the
    # 50 attempts, ends the retries
    policy = RetryPolicy(max_attempts=50, backoff_initial_s=0.001, backoff_max_s=0.002, deadline_s=10)
    fake.then(*[Step("status", UNAV, "shutting down")] * 50)
    with LedgerSDK(fake.target, retry=policy, clock=ManualClock(step_per_read=1.0)) as sdk, \
            pytest.raises(E.UnavailableError):
        sdk.submit(transfers(2))
    assert 1 < len(fake.batch_sizes) <= 10


def test_raise_on_failure_gives_transfer_failed(fake: FakeLedger) -> None:
    t = transfers(1)[0]
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        assert sdk.submit([t])[0].ok
        other = Transfer(id=t.id, debit_account_id=1, credit_account_id=2, amount=999, ledger=840, code=1)
        (o,) = sdk.submit([other])
        assert o.result == Result.EXISTS_WITH_DIFFERENT_AMOUNT and not o.ok
        with pytest.raises(E.ExistsWithDifferentFields) as info:
            sdk.submit([other], raise_on_failure=True)
        assert info.value.result == Result.EXISTS_WITH_DIFFERENT_AMOUNT
        # an identical retry by the caller is success (transfer_exists), not a failure
        (again,) = sdk.submit([t])
        assert again.result == Result.TRANSFER_EXISTS and again.ok and again.log_index == 0


# -- leader discovery and failover --------------------------------------------------------------------------


def test_follows_leader_hint_from_batch_status(fake: FakeLedger, fake2: FakeLedger) -> None:
    fake.then(*[Step("status", UNAV, "this node is not the region's leader", fake2.target)] * 5)
    ts = transfers(5)
    with LedgerSDK([fake.target], retry=FAST) as sdk:
        out = sdk.submit(ts)
        assert sdk.router_leader == fake2.target
        assert all(o.ok for o in out)
    assert not fake.commits
    assert_exactly_once(fake2, ts)


def test_follows_leader_from_trailing_metadata(fake: FakeLedger, fake2: FakeLedger) -> None:
    fake.then(Step("abort", UNAV, "not leader", fake2.target))
    ts = transfers(5)
    with LedgerSDK([fake.target], retry=FAST) as sdk:
        out = sdk.submit(ts)
        assert sdk.router_leader == fake2.target
    assert all(o.ok for o in out)
    assert_exactly_once(fake2, ts)


def test_rotates_through_the_region_when_a_node_is_down(fake: FakeLedger) -> None:
    dead = f"127.0.0.1:{free_port()}"
    ts = transfers(3)
    with LedgerSDK([dead, fake.target], retry=FAST) as sdk:
        assert all(o.ok for o in sdk.submit(ts))
        assert sdk.router_leader == fake.target
        assert len(sdk.lookup_transfers([t.id for t in ts])) == 3
    assert_exactly_once(fake, ts)


def test_a_region_that_cannot_be_reached_fails_after_the_deadline_without_sending(fake: FakeLedger) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    cfg = SdkConfig(connect_timeout_s=0.05)
    # every clock read moves time 1 s on: the 10 s deadline passes after a few unreachable rounds
    with LedgerSDK(dead, retry=FAST, config=cfg, clock=ManualClock(step_per_read=1.0)) as sdk, \
            pytest.raises(E.UnavailableError) as info:
        sdk.submit(transfers(3))
    assert "no node of the region reachable" in str(info.value)
    assert not isinstance(info.value, E.OutcomeUnknownError)  # nothing was sent: not uncertain


# -- indeterminate outcomes ------------------------------------------------------------------------------


def test_committed_then_stream_broke_is_resolved_by_lookup(fake: FakeLedger) -> None:
    fake.then(Step("commit_then_abort", UNAV, "connection reset"))
    ts = transfers(10)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert [o.result for o in out] == [Result.OK] * 10
    assert {o.resolution for o in out} == {"lookup"}
    assert [o.log_index for o in out] == list(range(10))
    assert fake.batch_sizes == [10]  # nothing re-sent: the lookup found every payment
    assert_exactly_once(fake, ts)


def test_not_committed_then_stream_broke_is_resent_with_same_ids(fake: FakeLedger) -> None:
    fake.then(Step("abort", UNAV, "connection reset"))
    ts = transfers(10)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert all(o.result == Result.OK and o.resolution == "response" and o.attempts == 2 for o in out)
    assert fake.batch_sizes == [10, 10]
    assert_exactly_once(fake, ts)


def test_late_commit_makes_resend_exists_which_is_success(fake: FakeLedger) -> None:
    # the first send is applied only after the SDK's lookup said "not found": the re-send meets it
    fake.then(Step("abort_commit_later", UNAV, "connection reset"))
    ts = transfers(6)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert all(o.result == Result.OK and o.resolution == "resend_exists" for o in out)
    assert_exactly_once(fake, ts)


def test_stream_refused_with_non_retryable_status_fails_only_what_is_not_in_the_ledger(fake: FakeLedger) -> None:
    fake.then(Step("abort", grpc.StatusCode.PERMISSION_DENIED, "unknown PSP key"))
    with LedgerSDK(fake.target, retry=FAST) as sdk, pytest.raises(E.PermissionDeniedError):
        sdk.submit(transfers(2))


def test_region_unreachable_during_resolution_is_unknown_not_failed(fake: FakeLedger) -> None:
    # lookups refused for longer than the retry deadline (1 s here; far more than max_attempts tries)
    policy = RetryPolicy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=1.0)
    fake.then(Step("abort", UNAV, "reset"), *[Step("lookup_status", UNAV, "down")] * 100_000)
    with LedgerSDK(fake.target, retry=policy) as sdk, pytest.raises(E.OutcomeUnknownError) as info:
        sdk.submit(transfers(2))
    assert len(info.value.transfer_ids) == 2
    assert not isinstance(info.value, E.LedgerStatusError | E.TransferFailed)
    assert 100_000 - len(fake.script) > policy.max_attempts  # the deadline ended the lookups, not a count


def test_lookups_outlast_a_slow_restart_within_the_deadline(fake: FakeLedger) -> None:
    """A node restarting under load refuses lookups for longer than ``max_attempts`` quick tries: the
    lookup retries until the deadline, so the batch still settles exactly once (never unknown)."""
    refusals = 4 * FAST.max_attempts
    fake.then(Step("commit_then_abort", UNAV, "connection reset"),
              *[Step("lookup_status", UNAV, "restarting")] * refusals)
    ts = transfers(10)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert not fake.script  # every refusal was met
    assert [o.result for o in out] == [Result.OK] * 10
    assert {o.resolution for o in out} == {"lookup"}
    assert fake.batch_sizes == [10]  # settled by the lookup, nothing re-sent
    assert_exactly_once(fake, ts)


# -- sessions: batching and back-pressure ------------------------------------------------------------------------


def test_session_batches_by_size(fake: FakeLedger) -> None:
    cfg = SdkConfig(batch_size_max=100, batch_delay_s=5.0, window_items=1000)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk, sdk.session() as s:
        futs = [s.send(t) for t in transfers(250)]
        # two full batches go out at once; the rest waits for the time bound or a flush
        assert [f.result(5).ok for f in futs[:200]] == [True] * 200
        assert not futs[-1].done()
        s.flush(5)
        assert list(s.stats.recent_batch_sizes) == [100, 100, 50]
    assert fake.batch_sizes == [100, 100, 50]


def test_session_batches_by_time(fake: FakeLedger) -> None:
    clock = ManualClock()
    cfg = SdkConfig(batch_size_max=1000, batch_delay_s=0.05)
    with LedgerSDK(fake.target, retry=FAST, config=cfg, clock=clock) as sdk, sdk.session() as s:
        futs = [s.send(t) for t in transfers(3)]
        time.sleep(0.3)  # real time passes, the session's clock does not: the batch stays open
        clock.advance(0.04)
        time.sleep(0.1)
        assert not any(f.done() for f in futs) and fake.batch_sizes == []
        clock.advance(0.01)
        outs = [f.result(5) for f in futs]  # no flush: the time bound seals the batch
        assert all(o.ok for o in outs)
        assert fake.batch_sizes == [3]
        clock.advance(1.0)
        more = [s.send(t) for t in transfers(2)]
        clock.advance(0.05)
        assert all(f.result(5).ok for f in more)
    assert fake.batch_sizes == [3, 2]


def test_batched_answers_settle_each_payment_with_its_own_outcome(fake: FakeLedger) -> None:
    """The node may answer several batches in one message (docs/formats.md "Submit answers"): the SDK
    asks for it and settles every payment from its own batch's answer, refusals included."""
    fake.pack_answers = 4
    fake.then(*[Step()] * 5, Step("status", grpc.StatusCode.INVALID_ARGUMENT, "bad batch", reason=pb.REASON_MALFORMED))
    cfg = SdkConfig(batch_size_max=10, batch_delay_s=5.0, window_items=1000, window_batches=8)
    ts = transfers(200)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk, sdk.session() as s:
        futs = [s.send(t) for t in ts]
        s.flush(10)
        refused = futs[50:60]  # the sixth batch
        for f in refused:
            with pytest.raises(E.InvalidBatchError):
                f.result(5)
        for t, f in zip(ts, futs, strict=True):
            if f in refused:
                continue
            out = f.result(5)
            _rec, index, block = fake.committed[u128_bytes(t.id)]
            assert out.ok and (out.log_index, out.block) == (index, block)
    assert fake.messages_with_more >= 4
    assert sum(fake.batch_sizes) == 200 and not any(u128_bytes(t.id) in fake.committed for t in ts[50:60])


def test_session_window_blocks_the_caller_until_acknowledged(fake: FakeLedger) -> None:
    fake.release.clear()
    fake.then(*[Step("hold")] * 100)
    cfg = SdkConfig(batch_size_max=10, batch_delay_s=0.01, window_items=30)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk:
        s = sdk.session()
        futs = [s.send(t) for t in transfers(30)]
        assert s.unacknowledged == 30
        with pytest.raises(TimeoutError):
            s.send(transfers(1)[0], timeout_s=0.3)  # the window is full: send blocks
        assert s.unacknowledged == 30
        fake.release.set()
        late = s.send(transfers(1)[0], timeout_s=5)
        s.flush(5)
        s.close()
        assert all(f.result().ok for f in [*futs, late])
        assert s.unacknowledged == 0


def test_session_callbacks_and_indeterminate_in_a_stream(fake: FakeLedger) -> None:
    fake.then(Step("ok"), Step("commit_then_abort", UNAV, "reset"), Step("ok"), Step("abort", UNAV, "reset"))
    cfg = SdkConfig(batch_size_max=50, batch_delay_s=0.01, window_items=200, window_batches=1)
    seen: list[Result] = []
    ts = transfers(400)
    with LedgerSDK(fake.target, retry=FAST, config=cfg) as sdk:
        with sdk.session() as s:
            futs = [s.send(t, callback=lambda f: seen.append(f.result().result)) for t in ts]
        assert all(f.result().ok for f in futs)
        assert s.stats.broken_streams == 2
    assert len(seen) == 400 and set(seen) == {Result.OK}
    assert_exactly_once(fake, ts)


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_stream_broken_with_transport_like_status_is_resolved_not_failed(fake: FakeLedger,
                                                                         code: grpc.StatusCode) -> None:
    # a kill -9 of the node can surface as INTERNAL "Internal error from Core" on the client
    fake.then(Step("abort", code, "Internal error from Core"), Step("commit_then_abort", code, "again"))
    ts = transfers(5)
    with LedgerSDK(fake.target, retry=FAST) as sdk:
        out = sdk.submit(ts)
    assert all(o.ok for o in out)
    assert {o.resolution for o in out} == {"lookup"}
    assert_exactly_once(fake, ts)
