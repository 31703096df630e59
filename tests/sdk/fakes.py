"""A scriptable in-process fake of the Ledger service, for deterministic SDK fault tests.

It keeps committed transfers in memory (idempotent like the real node: an identical retry gets
``transfer_exists`` with the original index), answers LookupTransfers, and follows a script of
per-batch behaviours: answer, refuse with a BatchStatus, abort the stream (optionally after
committing — the indeterminate case), or hold the answer until released.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from ledger.codec import ACCOUNT_SIZE, TRANSFER_SIZE
from ledger.types import EventKind, Result
from sovledger_pb import ANSWERS_BATCHED, ANSWERS_METADATA_KEY, LEADER_METADATA_KEY, REASON_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Step:
    """What to do with one incoming batch."""

    action: str = "ok"  # ok | status | abort | commit_then_abort | abort_commit_later | hold
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    leader_hint: str = ""
    reason: int = pb.REASON_UNSPECIFIED  # ErrorReason, sent as BatchStatus.reason / trailing metadata

    def trailers(self) -> tuple[tuple[str, str], ...]:
        out = ((LEADER_METADATA_KEY, self.leader_hint),) if self.leader_hint else ()
        if self.reason:
            out += ((REASON_METADATA_KEY, pb.ErrorReason.Name(self.reason)),)  # type: ignore[arg-type]
        return out


class FakeLedger(pb_grpc.LedgerServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: deque[Step] = deque()
        self.committed: dict[bytes, tuple[bytes, int, int]] = {}  # id -> (record, index, block)
        self.commits: Counter[bytes] = Counter()
        self.batch_sizes: list[int] = []
        self.later: list[pb.SubmitRequest] = []
        self.release = threading.Event()
        self.release.set()
        self.next_index = 0
        self.block = 0
        self.server: grpc.Server | None = None
        self.port = 0
        self.pack_answers = 0  # > 0: answers per message for a client that asks for batched answers
        self.messages_with_more = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeLedger:
        self.server = grpc.server(ThreadPoolExecutor(8))
        pb_grpc.add_LedgerServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.stop(0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def then(self, *steps: Step) -> FakeLedger:
        self.script.extend(steps)
        return self

    # -- ledger -----------------------------------------------------------------------------------

    def _apply(self, req: pb.SubmitRequest) -> pb.SubmitResponse:
        size = TRANSFER_SIZE if req.kind == EventKind.CREATE_TRANSFER else ACCOUNT_SIZE
        with self.lock:
            self.block += 1
            results, idxs, blocks = [], [], []
            for i in range(0, len(req.records), size):
                rec = req.records[i : i + size]
                tid = rec[:16]
                prior = self.committed.get(tid)
                if prior is None:
                    self.committed[tid] = (rec, self.next_index, self.block)
                    self.commits[tid] += 1
                    results.append(Result.OK)
                    idxs.append(self.next_index)
                    blocks.append(self.block)
                    self.next_index += 1
                elif prior[0] == rec:
                    results.append(Result.TRANSFER_EXISTS if size == TRANSFER_SIZE else Result.EXISTS)
                    idxs.append(prior[1])
                    blocks.append(prior[2])
                else:
                    results.append(Result.EXISTS_WITH_DIFFERENT_AMOUNT)
                    idxs.append(self.next_index)
                    blocks.append(self.block)
                    self.next_index += 1
            return pb.SubmitResponse(batch_id=req.batch_id, results=results, log_indexes=idxs, blocks=blocks,
                                     timestamp_ns=self.block)

    def _step(self) -> Step:
        with self.lock:
            return self.script.popleft() if self.script else Step()

    def Submit(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """With ``pack_answers`` = k and a client that asked for batched answers, k answers travel per
        message (the last message at the stream's end may hold fewer), in request order."""
        answers = self._answers(request_iterator, context)
        asked = (ANSWERS_METADATA_KEY, ANSWERS_BATCHED) in tuple(context.invocation_metadata() or ())
        if not (self.pack_answers and asked):
            yield from answers
            return
        held: list[pb.SubmitResponse] = []
        for answer in answers:
            held.append(answer)
            if len(held) == self.pack_answers:
                self.messages_with_more += 1
                yield pb.SubmitResponse(batch_id=held[0].batch_id, status=held[0].status, results=held[0].results,
                                        log_indexes=held[0].log_indexes, blocks=held[0].blocks,
                                        timestamp_ns=held[0].timestamp_ns, more=held[1:])
                held = []
        for answer in held:
            yield answer

    def _answers(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        for req in request_iterator:
            with self.lock:
                later, self.later = self.later, []
                self.batch_sizes.append(len(req.records) // (TRANSFER_SIZE if req.kind == 2 else ACCOUNT_SIZE))
            for r in later:
                self._apply(r)
            step = self._step()
            if step.action == "ok":
                yield self._apply(req)
            elif step.action == "hold":
                self.release.wait()
                yield self._apply(req)
            elif step.action == "status":
                yield pb.SubmitResponse(batch_id=req.batch_id, status=pb.BatchStatus(
                    code=step.code.value[0], message=step.message, leader_hint=step.leader_hint,
                    reason=step.reason))  # type: ignore[arg-type]
            elif step.action in ("abort", "commit_then_abort", "abort_commit_later"):
                if step.action == "commit_then_abort":
                    self._apply(req)
                elif step.action == "abort_commit_later":
                    with self.lock:
                        self.later.append(req)  # applied just before the next batch is processed
                context.set_trailing_metadata(step.trailers())
                context.abort(step.code, step.message or "fake abort")
            else:
                raise AssertionError(step.action)

    def LookupTransfers(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> Any:
        step = None
        with self.lock:
            if self.script and self.script[0].action == "lookup_status":
                step = self.script.popleft()
        if step is not None:
            context.set_trailing_metadata(step.trailers())
            context.abort(step.code, step.message)
        out = pb.LookupTransfersResponse()
        with self.lock:
            for tid in request.ids:
                hit = self.committed.get(tid)
                if hit is None:
                    out.transfers.add(id=tid, found=False)
                else:
                    out.transfers.add(id=tid, found=True, record=hit[0], log_index=hit[1], block=hit[2])
        return out


class ManualClock:
    """An injected SDK clock that moves only when a test says so (thread-safe)."""

    def __init__(self, start: float = 1000.0, step_per_read: float = 0.0) -> None:
        self._now = start
        self._step = step_per_read  # > 0: every read moves time on (a clock racing ahead)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            now = self._now
            self._now += self._step
            return now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
