"""Pure unit tests of the SDK pieces: ids, error mapping, retry policy, journal."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import grpc
import pytest

from clients import sdk_errors as E
from clients.ids import LOW_BITS, IdGenerator, id_bytes_be, id_time_ms, new_id, new_ids
from clients.journal import EntryState, Journal
from clients.sdk_types import PreparedTransfer, RetryPolicy, TransferOutcome
from ledger.types import Result
from sovledger_pb import LEADER_METADATA_KEY, REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb

# -- ids ----------------------------------------------------------------------------------------------


def test_ids_are_monotonic_unique_and_time_ordered() -> None:
    ids = new_ids(50_000)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    import time

    now_ms = time.time_ns() // 1_000_000
    assert abs(id_time_ms(ids[-1]) - now_ms) < 5_000
    assert 0 < ids[0] < 1 << 128
    # big-endian bytes sort like the ids: the node's B-tree appends at the right edge
    assert sorted(id_bytes_be(i) for i in ids) == [id_bytes_be(i) for i in ids]


def test_ids_stay_monotonic_when_the_clock_steps_back() -> None:
    clock = iter([1000, 1000, 999, 998, 1001, 1001])
    g = IdGenerator(lambda: next(clock))
    ids = [g.new() for _ in range(6)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert [id_time_ms(i) for i in ids][:4] == [1000] * 4
    assert id_time_ms(ids[4]) == 1001


def test_ids_unique_across_threads() -> None:
    out: list[list[int]] = [[] for _ in range(4)]

    def work(k: int) -> None:
        out[k] = [new_id() for _ in range(10_000)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for part in out for i in part]
    assert len(set(flat)) == len(flat)
    for part in out:
        assert part == sorted(part)


def test_two_generators_in_the_same_ms_do_not_collide() -> None:
    a, b = IdGenerator(lambda: 5), IdGenerator(lambda: 5)
    assert not set(a.many(1000)) & set(b.many(1000))
    assert all(i >> LOW_BITS == 5 for i in a.many(10))


# -- error mapping ---------------------------------------------------------------------------------------

R = pb.ErrorReason
STATUS_CASES = [
    (grpc.StatusCode.UNAVAILABLE, "connection refused", "", R.REASON_UNSPECIFIED, E.UnavailableError),
    (grpc.StatusCode.UNAVAILABLE, "this node is not the region's leader: the leader is h:1", "h:1",
     R.REASON_NOT_LEADER, E.NotLeaderError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "", "", R.REASON_TIMEOUT, E.DeadlineExceededError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "ingest queue full (1 items waiting)", "", R.REASON_OVERLOADED,
     E.OverloadedError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "store full (map full); the node refuses new work", "",
     R.REASON_STORE_FULL, E.StoreFullError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "PSP over its fair share", "", R.REASON_RATE_LIMITED, E.OverloadedError),
    (grpc.StatusCode.INVALID_ARGUMENT, "malformed request", "", R.REASON_MALFORMED, E.InvalidBatchError),
    (grpc.StatusCode.PERMISSION_DENIED, "bad PSP signature", "", R.REASON_PERMISSION_DENIED,
     E.PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, "", "", R.REASON_UNAUTHENTICATED, E.UnauthenticatedError),
    (grpc.StatusCode.FAILED_PRECONDITION, "", "", R.REASON_REFUSED, E.PreconditionFailedError),
    (grpc.StatusCode.NOT_FOUND, "", "", R.REASON_NOT_FOUND, E.NotFoundError),
    (grpc.StatusCode.ALREADY_EXISTS, "", "", R.REASON_UNSPECIFIED, E.AlreadyExistsError),
    (grpc.StatusCode.OUT_OF_RANGE, "", "", R.REASON_OUT_OF_RANGE, E.OutOfRangeError),
    (grpc.StatusCode.ABORTED, "", "", R.REASON_UNSPECIFIED, E.AbortedError),
    (grpc.StatusCode.CANCELLED, "", "", R.REASON_UNSPECIFIED, E.CancelledError),
    (grpc.StatusCode.UNIMPLEMENTED, "", "", R.REASON_UNSPECIFIED, E.UnimplementedError),
    (grpc.StatusCode.INTERNAL, "", "", R.REASON_INTERNAL, E.InternalError),
    (grpc.StatusCode.DATA_LOSS, "", "", R.REASON_DATA_LOSS, E.DataLossError),
    (grpc.StatusCode.UNKNOWN, "", "", R.REASON_UNSPECIFIED, E.UnknownStatusError),
    # personal data (docs/privacy.md): a screened batch can never succeed; an erased subject stays erased
    (grpc.StatusCode.INVALID_ARGUMENT, "record #0: field external_ref looks like an e-mail address", "",
     R.REASON_PERSONAL_DATA, E.InvalidBatchError),
    (grpc.StatusCode.FAILED_PRECONDITION, "subject 0x5 was erased", "", R.REASON_SUBJECT_ERASED,
     E.PreconditionFailedError),
]


@pytest.mark.parametrize(("code", "message", "hint", "reason", "cls"), STATUS_CASES,
                         ids=lambda x: getattr(x, "name", None))
def test_every_status_maps_to_its_typed_error(code: grpc.StatusCode, message: str, hint: str, reason: int,
                                             cls: type[E.LedgerStatusError]) -> None:
    err = E.error_for_status(code.value[0], message, hint, "t:1", reason)
    assert type(err) is cls
    assert err.code == code
    assert err.leader_hint == hint
    assert err.reason == reason
    assert isinstance(err, E.LedgerStatusError) and isinstance(err, E.SdkError)


@pytest.mark.parametrize(("code", "message", "hint", "reason", "cls"), STATUS_CASES,
                         ids=lambda x: getattr(x, "name", None))
def test_the_message_text_never_picks_the_class(code: grpc.StatusCode, message: str, hint: str, reason: int,
                                               cls: type[E.LedgerStatusError]) -> None:
    # the same code and reason with another (or no) message: the same class
    for text in ("", "store full", "this node is not the region's leader", "ingest queue full"):
        assert type(E.error_for_status(code, text, hint, "t:1", reason)) is cls


def test_without_a_reason_the_status_code_decides() -> None:
    # a node that sends no reason yet: UNAVAILABLE + leader hint is NotLeader, the rest follow the code
    assert type(E.error_for_status(grpc.StatusCode.UNAVAILABLE, "", "h:2")) is E.NotLeaderError
    assert type(E.error_for_status(grpc.StatusCode.UNAVAILABLE, "not the region's leader")) is E.UnavailableError
    assert type(E.error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "store full")) is E.OverloadedError
    # a reason this SDK does not know yet (a newer node): the code decides
    assert type(E.error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "", "", 999)) is E.OverloadedError


def test_trailing_metadata_carries_leader_reason_and_retry_after() -> None:
    md = [(LEADER_METADATA_KEY, "h:3"), (REASON_METADATA_KEY, "REASON_NOT_LEADER")]
    err = E.error_for_trailers(grpc.StatusCode.UNAVAILABLE, "x", md, "t:1")
    assert type(err) is E.NotLeaderError and err.leader_hint == "h:3" and err.reason == R.REASON_NOT_LEADER
    md = [(REASON_METADATA_KEY, "REASON_STORE_FULL")]
    assert type(E.error_for_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "", md)) is E.StoreFullError
    md = [(REASON_METADATA_KEY, "REASON_RATE_LIMITED"), (RETRY_AFTER_METADATA_KEY, "250")]
    err = E.error_for_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "", md)
    assert type(err) is E.OverloadedError and err.retryable and err.retry_after_s == 0.25
    md = [(REASON_METADATA_KEY, "REASON_FROM_THE_FUTURE")]
    assert E.error_for_trailers(grpc.StatusCode.INTERNAL, "", md).reason == R.REASON_UNSPECIFIED


def test_every_status_code_is_covered() -> None:
    covered = {c for c, *_ in STATUS_CASES}
    assert {r for *_, r, _ in STATUS_CASES} == set(R.values())
    assert covered == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    with pytest.raises(ValueError):
        E.error_for_status(0)


def test_retryable_classes() -> None:
    retryable = {c for c in E.STATUS_ERRORS.values() if c.retryable}
    assert E.UnavailableError in retryable and E.DeadlineExceededError in retryable
    assert E.OverloadedError in retryable and E.NotLeaderError.retryable
    assert not E.StoreFullError.retryable and not E.PermissionDeniedError.retryable
    assert not E.InvalidBatchError.retryable


@pytest.mark.parametrize("result", list(Result), ids=lambda r: r.name)
def test_every_result_code_maps(result: Result) -> None:
    o = TransferOutcome(7, result, 1, 1)
    cls = E.failure_class(result)
    if result.is_success:
        assert cls is None and o.ok
        assert o.raise_for_result() is o
    else:
        assert cls is not None and issubclass(cls, E.TransferFailed)
        with pytest.raises(cls) as info:
            o.raise_for_result()
        assert info.value.result == result and info.value.outcome is o


def test_result_families() -> None:
    assert E.failure_class(Result.EXCEEDS_CREDITS) is E.BalanceLimitExceeded
    assert E.failure_class(Result.DEBIT_ACCOUNT_NOT_FOUND) is E.AccountNotFound
    assert E.failure_class(Result.EXISTS_WITH_DIFFERENT_AMOUNT) is E.ExistsWithDifferentFields
    assert E.failure_class(Result.LINKED_EVENT_FAILED) is E.LinkedEventFailed
    assert E.failure_class(Result.RULE_REJECTED) is E.RuleRejected
    assert E.failure_class(Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS) is E.LedgerMismatch


def test_backoff_is_bounded_exponential_with_jitter() -> None:
    import random

    p = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=1.0, rng=random.Random(1))
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        d = [p.delay_s(attempt) for _ in range(50)]
        assert all(cap / 2 <= x <= cap for x in d)
        assert len(set(d)) > 1  # jitter


# -- journal --------------------------------------------------------------------------------------------


def test_journal_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    items = [PreparedTransfer(i, bytes([i]) * 176, b"s" * 64, b"kid1") for i in (3, 1, 2)]
    with Journal(path) as j:
        j.record_pending(items)
        j.record_pending(items[:1])  # idempotent
        assert [e.transfer_id for e in j.unresolved()] == [1, 2, 3]
        j.record_outcomes([TransferOutcome(1, Result.OK, 10, 2)])
        j.record_refused([2], "PERMISSION_DENIED: nope")
        assert j.counts() == {"pending": 1, "done": 1, "refused": 1}
    with Journal(path) as j:  # survives reopening
        (e,) = j.unresolved()
        assert e.transfer_id == 3 and e.prepared() == items[0]
        done = j.get(1)
        assert done is not None and done.state == EntryState.DONE and done.log_index == 10
        assert j.get(2).state == EntryState.REFUSED  # type: ignore[union-attr]
