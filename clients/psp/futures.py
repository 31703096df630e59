"""``PaymentFuture``: the per-payment future of the threaded ``Session.send``, made cheap.

A ``concurrent.futures.Future`` builds a ``threading.Condition`` (a lock, a deque) in its
constructor and takes it, notifies and runs callbacks in ``set_result``: about a fifth of the
per-object API's cost. A ``PaymentFuture`` *is* a ``concurrent.futures.Future`` (``wait``,
``as_completed``, ``add_done_callback``, ``cancel`` work as usual) but:

* all futures of a session share the session's condition (no lock per payment);
* the outcome arrives as a reference to the batch's outcome columns and a row: the
  ``TransferOutcome`` is built only when ``result()`` is called (lazily, once);
* a batch's futures are completed under one acquisition of that condition; waiting callers are
  woken once per batch (the session notifies after every group of outcomes).

Waiting uses ``Condition.wait_for`` on the state, so a wake-up meant for another payment of the
session never ends a wait early.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Sequence
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any

from clients.psp.outcomes import RESOLUTIONS, Columns
from clients.sdk_types import TransferOutcome
from ledger.types import Result

_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)
log = logging.getLogger("sovledger.sdk")


class PaymentFuture(concurrent.futures.Future[TransferOutcome]):
    """Future of one payment's ``TransferOutcome``; also the callable that delivers it (``Deliver``)."""

    # defaults as class attributes: the constructor sets only what differs per payment
    _state = PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _cols: _Rows | None = None
    _row = 0

    def __init__(self, condition: threading.Condition, transfer_id: int) -> None:  # no super(): no new lock
        self._condition = condition
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self._tid = transfer_id

    # -- completion (the SDK's loop thread) ----------------------------------------------------------

    def __call__(self, value: TransferOutcome | BaseException, /) -> None:
        """Deliver an outcome or an exception (the ``Deliver`` protocol: the slow, per-payment path)."""
        with self._condition:
            if self._state != PENDING:
                return  # cancelled by the caller: the outcome is dropped
            if isinstance(value, BaseException):
                self._exception = value
            else:
                self._result = value
            self._state = FINISHED
            self._condition.notify_all()
            self._wake_waiters()
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        for fn in self._done_callbacks:
            try:
                fn(self)
            except Exception:  # like concurrent.futures: a caller's callback must not stop the SDK
                log.exception("exception calling callback for %r", self)

    def _wake_waiters(self) -> None:
        for w in self._waiters:
            if self._exception is not None:
                w.add_exception(self)
            else:
                w.add_result(self)

    # -- reading (any thread) ------------------------------------------------------------------------

    def _outcome(self) -> TransferOutcome:
        if self._result is None:
            c, i = self._cols, self._row
            assert c is not None
            self._result = TransferOutcome(self._tid, _RESULT.get(c.results[i]) or Result(c.results[i]),
                                           c.log_indexes[i], c.blocks[i], c.timestamps_ns[i], c.attempts,
                                           RESOLUTIONS[c.how[i]])
            self._cols = None
        out: TransferOutcome = self._result
        return out

    def _wait(self, timeout: float | None) -> None:
        if self._state == FINISHED:
            return
        with self._condition:
            if not self._condition.wait_for(lambda: self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED),
                                            timeout):
                raise TimeoutError()
        if self._state in _CANCELLED:
            raise concurrent.futures.CancelledError()

    def result(self, timeout: float | None = None) -> TransferOutcome:
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._outcome()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exception


class _Rows:
    """A batch's outcome columns as Python lists, made once per batch and shared by its futures."""

    __slots__ = ("attempts", "blocks", "how", "log_indexes", "results", "timestamps_ns")

    def __init__(self, cols: Columns) -> None:
        self.results: list[int] = cols.results.tolist()
        self.log_indexes: list[int] = cols.log_indexes.tolist()
        self.blocks: list[int] = cols.blocks.tolist()
        self.timestamps_ns: list[int] = cols.timestamps_ns.tolist()
        self.how: list[int] = cols.how.tolist()
        self.attempts = cols.attempts


_RESULT: dict[int, Result] = {int(r): r for r in Result}


def settle_futures(futures: Sequence[PaymentFuture], rows: Sequence[int], cols: Columns) -> None:
    """Complete ``futures[k]`` with row ``rows[k]`` of ``cols``, lazily, under one lock: the fast path
    of a response. Futures the caller cancelled are skipped. Callbacks run after the lock is released."""
    if not futures:
        return
    cond = futures[0]._condition
    lists = _Rows(cols)
    later, other = [], []
    with cond:
        for f, i in zip(futures, rows, strict=True):
            if f._condition is not cond:  # a future of another session: its own lock
                other.append((f, i))
                continue
            if f._state != PENDING:
                continue
            f._cols, f._row, f._state = lists, i, FINISHED
            if f._waiters or f._done_callbacks:
                f._wake_waiters()
                later.append(f)
        cond.notify_all()
    for f in later:
        f._run_callbacks()
    for f, i in other:
        settle_futures([f], [i], cols)


__all__ = ["PaymentFuture", "settle_futures"]
