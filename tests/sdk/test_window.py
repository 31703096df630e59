"""The SDK's pure window/retry state machine: events in, actions out, time as plain numbers."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest

from clients import sdk_errors as E
from clients.psp.bulk import ArraySink, BulkOutcomes
from clients.psp.outcomes import NO_RESULT, ObjectSink, Origin
from clients.psp.window import (
    ArmTimer,
    Batch,
    Fail,
    Found,
    Retry,
    SealBatch,
    SendWindow,
    SessionWindow,
    UnexpectedResponse,
    outcomes_of_response,
    settle_by_lookup,
)
from clients.sdk_types import RetryPolicy, TransferOutcome
from ledger.types import EventKind, Result

ROOT = Path(__file__).resolve().parents[2]
POLICY = RetryPolicy(max_attempts=4, backoff_initial_s=0.1, backoff_max_s=1.0, deadline_s=30, rng=random.Random(7))


def rec(n: int) -> bytes:
    return n.to_bytes(16, "little") + bytes([n % 256]) * 160


def batch(*ids: int, seen: list[object] | None = None) -> Batch:
    sink = seen if seen is not None else []
    origin = Origin(ObjectSink(list(ids), [sink.append] * len(ids)), 0, len(ids))
    return Batch.of(EventKind.CREATE_TRANSFER, b"".join(rec(i) for i in ids), origin)


def add(w: SessionWindow, n: int, now: float) -> ArmTimer | SealBatch | None:
    return w.add(n, rec(n), lambda _v: None, now)


# -- session window ------------------------------------------------------------------------------------


def test_session_window_seals_at_size_and_arms_one_timer() -> None:
    w = SessionWindow(batch_size_max=3, batch_delay_s=0.5, window_items=10)
    assert add(w, 1, now=10.0) == ArmTimer(0.5)
    assert add(w, 2, now=10.1) is None
    sealed = add(w, 3, now=10.2)
    assert isinstance(sealed, SealBatch) and sealed.batch.ids == [1, 2, 3]
    assert sealed.batch.records == rec(1) + rec(2) + rec(3)
    # a new batch opens while the first timer is still pending: no second timer
    assert add(w, 4, now=10.3) is None
    # the old timer fires: the open batch is 0.2 s old, wait the remaining 0.3 s
    action = w.on_timer(now=10.5)
    assert isinstance(action, ArmTimer) and action.delay_s == pytest.approx(0.3)
    sealed = w.on_timer(now=10.8)
    assert isinstance(sealed, SealBatch) and sealed.batch.ids == [4]
    assert w.on_timer(now=11.0) is None  # nothing buffered: the timer dies
    assert add(w, 5, now=12.0) == ArmTimer(0.5)


def test_session_window_back_pressure_counts_until_outcomes() -> None:
    w = SessionWindow(batch_size_max=100, batch_delay_s=1.0, window_items=2)
    add(w, 1, 0.0)
    add(w, 2, 0.0)
    assert not w.has_room() and w.unacked == 2 and w.sent == 2
    sealed = w.flush()
    assert isinstance(sealed, SealBatch) and w.flush() is None
    assert not w.has_room()  # sealed is not acknowledged
    w.on_outcome()
    assert w.has_room() and not w.idle() and w.acked == 1
    w.on_outcome()
    assert w.idle()
    w.admit_bulk(5)  # the bulk path counts whole buffers
    assert w.unacked == 5 and not w.has_room()
    w.on_outcome(5)
    assert w.idle() and w.acked == 7


# -- send window -----------------------------------------------------------------------------------------


def test_send_window_limits_batches_in_flight_and_stamps_sends() -> None:
    sw = SendWindow(window_batches=2, retry=POLICY, response_timeout_s=5.0)
    for i in (1, 2, 3):
        sw.enqueue(batch(i), 0.0)
    a = sw.next_send(101, now=1.0)
    b = sw.next_send(102, now=2.0)
    assert not sw.can_send()  # two in flight
    assert (a.batch_id, a.attempts, a.first_sent, a.sent_at) == (101, 1, 1.0, 1.0)
    assert not sw.overdue(6.0) and sw.overdue(6.5)
    with pytest.raises(UnexpectedResponse):
        sw.on_response(102, now=6.0)  # answers must come in order
    assert sw.on_response(101, now=6.0) is a and sw.can_send()
    # a slow node answering batch after batch is not a broken stream: the clock restarts at each answer
    assert not sw.overdue(10.9) and sw.overdue(11.1)
    assert sw.on_response(102, now=11.0) is b and not sw.overdue(100.0)
    assert sw.stats.batches_sent == 2 and list(sw.stats.recent_batch_sizes) == [1, 1]


def test_refusals_become_retry_or_fail_actions() -> None:
    sw = SendWindow(1, POLICY, 5.0)
    sw.enqueue(batch(1), 0.0)
    b = sw.next_send(1, now=0.0)
    sw.on_response(1, now=0.0)
    hinted = sw.on_refusal(b, E.NotLeaderError("h:2"), now=0.1)
    assert isinstance(hinted, Retry) and hinted.backoff_s == 0.0  # follow the leader at once
    overloaded = sw.on_refusal(b, E.OverloadedError("busy", retry_after_s=3.0), now=0.1)
    assert isinstance(overloaded, Retry) and overloaded.backoff_s == 3.0  # the node's retry-after wins
    plain = sw.on_refusal(b, E.UnavailableError("down"), now=0.1)
    assert isinstance(plain, Retry) and 0.05 <= plain.backoff_s <= 0.1
    refused = sw.on_refusal(b, E.StoreFullError("full"), now=0.1)
    assert isinstance(refused, Fail) and isinstance(refused.error, E.StoreFullError)


def test_give_up_by_attempts_and_by_deadline_on_the_given_clock() -> None:
    sw = SendWindow(1, POLICY, 5.0)
    b = batch(1)
    sw.enqueue(b, 0.0)
    sw.next_send(1, now=100.0)
    sw.on_response(1, now=0.0)
    assert not sw.give_up(b, now=130.0)
    assert sw.give_up(b, now=130.1)  # 30 s after the first send
    assert isinstance(sw.on_refusal(b, E.UnavailableError(), now=131.0), Fail)
    b.attempts = POLICY.max_attempts
    assert sw.give_up(b, now=100.0)


def test_an_unreachable_node_costs_no_attempt_but_the_deadline_still_holds() -> None:
    sw = SendWindow(2, POLICY, 5.0)
    queued, later = batch(1), batch(2)
    sw.enqueue(queued, now=0.0)
    sw.enqueue(later, now=20.0)
    expired, backoff = sw.on_unreachable(now=10.0)
    assert expired == [] and 0.05 <= backoff <= 0.1 and queued.attempts == 0 and not queued.uncertain
    expired, _ = sw.on_unreachable(now=30.5)  # 30 s since the first was queued, never sent
    assert expired == [queued] and list(sw.ready) == [later]


def test_broken_stream_makes_batches_uncertain_and_requeue_keeps_order() -> None:
    sw = SendWindow(4, POLICY, 5.0)
    first, second, third = batch(1), batch(2), batch(3)
    for b in (first, second, third):
        sw.enqueue(b, 0.0)
    sw.next_send(1, 0.0)
    sw.next_send(2, 0.0)
    unanswered, backoff = sw.on_broken()
    assert unanswered == [first, second] and all(b.uncertain for b in unanswered)
    assert not sw.inflight and 0.05 <= backoff <= 0.1
    assert sw.stats.broken_streams == 1 and sw.stats.indeterminate_batches == 2
    _, backoff2 = sw.on_broken()
    assert 0.1 <= backoff2 <= 0.2  # consecutive broken rounds back off further
    sw.on_accepted()
    assert sw.round_failures == 0
    sw.requeue([second, first])
    assert list(sw.ready) == [first, second, third]
    again = sw.next_send(3, 1.0)
    assert again is first and again.attempts == 2 and again.first_sent == 0.0 and sw.stats.resends == 1


# -- reading answers -----------------------------------------------------------------------------------


def test_outcomes_of_a_resent_batch() -> None:
    seen: list[object] = []
    b = batch(1, 2, 3, seen=seen)
    b.attempts, b.uncertain = 2, True
    results = [Result.TRANSFER_EXISTS, Result.OK, Result.EXCEEDS_CREDITS]
    final, confirm = outcomes_of_response(b, results, [7, 8, 9], [3, 3, 3], 55)
    assert final.rows.tolist() == [0, 1] and final.results.tolist() == [Result.OK, Result.OK]
    assert final.how.tolist() == [2, 0]  # resend_exists, response
    # a failing code after an uncertain send is not final before a lookup
    assert confirm is not None and confirm.rows.tolist() == [2] and confirm.results.tolist() == [Result.EXCEEDS_CREDITS]
    assert b.origin.settle(final) is False  # one row still open
    assert [(o.transfer_id, o.result, o.resolution, o.log_index, o.attempts) for o in seen] == [  # type: ignore[attr-defined]
        (1, Result.OK, "resend_exists", 7, 2), (2, Result.OK, "response", 8, 2)]
    assert b.origin.settle(confirm) is True and len(seen) == 3
    assert b.origin.results.tolist() == [0, 0, int(Result.EXCEEDS_CREDITS)]


def test_outcomes_of_a_first_send_keep_exists_as_is() -> None:
    b = batch(1)
    b.attempts = 1
    final, confirm = outcomes_of_response(b, [Result.TRANSFER_EXISTS], [4], [2], 0)
    assert final.results.tolist() == [Result.TRANSFER_EXISTS] and final.how.tolist() == [0] and confirm is None
    with pytest.raises(UnexpectedResponse):
        outcomes_of_response(b, [0, 0], [1, 2], [1, 1], 0)  # two results for one record


def test_settle_by_lookup_needs_the_same_record() -> None:
    b = batch(1, 2, 3)
    found = [Found(rec(1), 10, 2, 99), Found(b"other" * 35 + b"x", 11, 2, 99), None]
    cols = settle_by_lookup(b, [0, 1, 2], found)
    assert cols.rows.tolist() == [0] and cols.log_indexes.tolist() == [10] and cols.how.tolist() == [1]
    b.keep(np.array([False, True, True]))
    assert b.ids == [2, 3] and b.rows.tolist() == [1, 2] and b.records == rec(2) + rec(3)


def test_a_batch_refused_for_good_is_final_an_unknown_one_is_not() -> None:
    seen: list[object] = []
    b = batch(1, 2, seen=seen)
    assert b.fail_all(E.OutcomeUnknownError([1, 2]), final=False) is False
    assert b.origin.unresolved == 2 and len(seen) == 2  # reported, but the journal keeps them open
    b2 = batch(3, 4)
    assert b2.fail_all(E.PermissionDeniedError("no"), final=True) is True
    assert b2.origin.results.tolist() == [NO_RESULT, NO_RESULT]


def test_array_sink_fills_columns_and_objects_come_lazily() -> None:
    records = rec(5) + rec(6) + rec(7)
    out = BulkOutcomes.empty(records)
    progress: list[int] = []
    done: list[BulkOutcomes] = []
    sink = ArraySink(out, progress.append, done.append)
    first, second = Origin(sink, 0, 2), Origin(sink, 2, 1)
    b = Batch.of(EventKind.CREATE_TRANSFER, records[: 2 * 176], first)
    b.attempts = 1
    cols, _ = outcomes_of_response(b, [0, int(Result.EXCEEDS_CREDITS)], [40, 41], [9, 9], 123)
    first.settle(cols)
    assert not done and progress == [2]
    second.fail(np.array([0]), E.StoreFullError("full"), final=True)
    assert done == [out] and progress == [2, 1]
    assert out.results.tolist() == [0, Result.EXCEEDS_CREDITS, NO_RESULT] and out.ok.tolist() == [True, False, False]
    assert out.outcome(0) == TransferOutcome(5, Result.OK, 40, 9, 123, 1, "response")
    with pytest.raises(E.StoreFullError):
        out.outcome(2)
    with pytest.raises(E.StoreFullError):
        out.outcomes()


# -- shape rules -----------------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_window_does_no_io_and_reads_no_clock() -> None:
    src = ROOT / "clients" / "psp" / "window.py"
    assert not _imports(src) & {"asyncio", "time", "socket", "threading", "grpc.aio", "sqlite3", "os"}
    assert "monotonic" not in src.read_text()
    # only the config module names the default clock; everything else gets it injected
    for path in (ROOT / "clients" / "psp").glob("*.py"):
        if path.name != "config.py":
            assert "time.monotonic" not in path.read_text(), path


def test_errors_and_types_do_not_import_each_other() -> None:
    assert "clients.sdk_types" not in _imports(ROOT / "clients" / "sdk_errors.py")

