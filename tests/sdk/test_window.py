"""The SDK's pure window/retry state machine: events in, actions out, time as plain numbers."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from clients import sdk_errors as E
from clients.psp.window import (
    ArmTimer,
    Batch,
    Fail,
    Found,
    Item,
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


def item(n: int, seen: list[object] | None = None) -> Item:
    sink = seen if seen is not None else []
    return Item(n, bytes([n % 256]) * 176, sink.append)


def batch(*ids: int, kind: EventKind = EventKind.CREATE_TRANSFER) -> Batch:
    return Batch(kind, [item(i) for i in ids])


# -- session window ------------------------------------------------------------------------------------


def test_session_window_seals_at_size_and_arms_one_timer() -> None:
    w = SessionWindow(batch_size_max=3, batch_delay_s=0.5, window_items=10)
    assert w.add(item(1), now=10.0) == ArmTimer(0.5)
    assert w.add(item(2), now=10.1) is None
    sealed = w.add(item(3), now=10.2)
    assert isinstance(sealed, SealBatch) and sealed.batch.ids == [1, 2, 3]
    # a new batch opens while the first timer is still pending: no second timer
    assert w.add(item(4), now=10.3) is None
    # the old timer fires: the open batch is 0.2 s old, wait the remaining 0.3 s
    action = w.on_timer(now=10.5)
    assert isinstance(action, ArmTimer) and action.delay_s == pytest.approx(0.3)
    sealed = w.on_timer(now=10.8)
    assert isinstance(sealed, SealBatch) and sealed.batch.ids == [4]
    assert w.on_timer(now=11.0) is None  # nothing buffered: the timer dies
    assert w.add(item(5), now=12.0) == ArmTimer(0.5)


def test_session_window_back_pressure_counts_until_outcomes() -> None:
    w = SessionWindow(batch_size_max=100, batch_delay_s=1.0, window_items=2)
    w.add(item(1), 0.0)
    w.add(item(2), 0.0)
    assert not w.has_room() and w.unacked == 2 and w.sent == 2
    sealed = w.flush()
    assert isinstance(sealed, SealBatch) and w.flush() is None
    assert not w.has_room()  # sealed is not acknowledged
    w.on_outcome()
    assert w.has_room() and not w.idle() and w.acked == 1
    w.on_outcome()
    assert w.idle()


# -- send window -----------------------------------------------------------------------------------------


def test_send_window_limits_batches_in_flight_and_stamps_sends() -> None:
    sw = SendWindow(window_batches=2, retry=POLICY, response_timeout_s=5.0)
    for i in (1, 2, 3):
        sw.enqueue(batch(i))
    a = sw.next_send(101, now=1.0)
    b = sw.next_send(102, now=2.0)
    assert not sw.can_send()  # two in flight
    assert (a.batch_id, a.attempts, a.first_sent, a.sent_at) == (101, 1, 1.0, 1.0)
    assert not sw.overdue(6.0) and sw.overdue(6.5)
    with pytest.raises(UnexpectedResponse):
        sw.on_response(102)  # answers must come in order
    assert sw.on_response(101) is a and sw.can_send()
    assert sw.on_response(102) is b
    assert sw.stats.batches_sent == 2 and list(sw.stats.recent_batch_sizes) == [1, 1]


def test_refusals_become_retry_or_fail_actions() -> None:
    sw = SendWindow(1, POLICY, 5.0)
    sw.enqueue(batch(1))
    b = sw.next_send(1, now=0.0)
    sw.on_response(1)
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
    sw.enqueue(b)
    sw.next_send(1, now=100.0)
    sw.on_response(1)
    assert not sw.give_up(b, now=130.0)
    assert sw.give_up(b, now=130.1)  # 30 s after the first send
    assert isinstance(sw.on_refusal(b, E.UnavailableError(), now=131.0), Fail)
    b.attempts = POLICY.max_attempts
    assert sw.give_up(b, now=100.0)


def test_broken_stream_makes_batches_uncertain_and_requeue_keeps_order() -> None:
    sw = SendWindow(4, POLICY, 5.0)
    first, second, third = batch(1), batch(2), batch(3)
    for b in (first, second, third):
        sw.enqueue(b)
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
    b = Batch(EventKind.CREATE_TRANSFER, [item(1, seen), item(2, seen), item(3, seen)], attempts=2, uncertain=True)
    results = [Result.TRANSFER_EXISTS, Result.OK, Result.EXCEEDS_CREDITS]
    final, confirm = outcomes_of_response(b, results, [7, 8, 9], [3, 3, 3], 55)
    assert [(o.result, o.resolution) for o in final] == [(Result.OK, "resend_exists"), (Result.OK, "response")]
    assert final[0].log_index == 7 and final[0].attempts == 2
    # a failing code after an uncertain send is not final before a lookup
    ((it, pending),) = confirm
    assert it.transfer_id == 3 and pending.result == Result.EXCEEDS_CREDITS and not it.done
    assert seen == final


def test_outcomes_of_a_first_send_keep_exists_as_is() -> None:
    b = Batch(EventKind.CREATE_TRANSFER, [item(1)], attempts=1)
    final, confirm = outcomes_of_response(b, [Result.TRANSFER_EXISTS], [4], [2], 0)
    assert final[0].result == Result.TRANSFER_EXISTS and final[0].resolution == "response" and not confirm


def test_settle_by_lookup_needs_the_same_record() -> None:
    a, b, c = item(1), item(2), item(3)
    found = [Found(a.record, 10, 2, 99), Found(b"other" * 35, 11, 2, 99), None]
    settled, rest = settle_by_lookup([a, b, c], found, attempts=1)
    assert settled == [TransferOutcome(1, Result.OK, 10, 2, 99, 1, "lookup")]
    assert rest == [b, c] and a.done and not b.done


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

