"""Many small requests: N concurrent PSP streams, each sending one payment per request.

The node groups batches from all streams into shared blocks (group commit, node/pipeline.py), so
what this measures is the per-request cost on the node (gRPC message, validation, a queue entry, a
future, a response) and on the client, not one fsync per payment. Used by ``bench.region`` (the
"64 streams × 1 payment" row of ``make bench``); run alone against a running node with
``python -m bench.streams --target HOST:PORT [--streams 64] [--seconds 10]`` (its accounts must exist:
the bench's workload, ``bench.region.setup_ledger``).

The client is ``procs`` processes (default 1), each one asyncio loop with its share of the
``streams`` grpc.aio Submit calls on one channel; each stream keeps ``window`` requests unanswered.
The client spends ~100 µs of CPU per one-payment request (message encode, the aio stream machinery,
the response), about half of what the node spends; measured on 2 cores, one client process was not
the limit (0.2–0.35 cores busy; 2 or 4 processes were not faster: bench/README.md). The result
reports the client processes and their CPU (``client_cpu_s``) beside the rate, so a saturated client
shows. Records are generated before timing; the run is bounded in count (the records given) and in
time.

Each stream asks for batched answers (call metadata ``sovledger-answers: batched``, docs/formats.md
"Submit answers"): one response message then answers every request of the stream already decided,
in order; ``answers_per_message`` in the result says how many that was on average.
``--one-answer-per-message`` measures an old client (one response message per request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.report import percentile
from ledger.codec import TRANSFER_SIZE
from ledger.types import Result
from sovledger_pb import ANSWERS_BATCHED, ANSWERS_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

STREAMS = 64
WINDOW = 8  # unanswered one-payment requests per stream: 512 in flight over 64 streams
PROCS = 1  # client processes sharing the streams (--procs)
BATCHED_ANSWERS = ((ANSWERS_METADATA_KEY, ANSWERS_BATCHED),)  # call metadata: several answers per message


async def _one_stream(stub: pb_grpc.LedgerStub, records: list[bytes], window: int, deadline: float,
                      latencies: list[float], codes: Counter[int], refused: Counter[str], batched: bool,
                      messages: list[int]) -> None:
    slots = asyncio.Semaphore(window)
    sent_at: dict[int, float] = {}

    async def requests() -> AsyncIterator[pb.SubmitRequest]:
        for i, rec in enumerate(records, 1):
            await slots.acquire()
            if time.monotonic() > deadline:
                return
            sent_at[i] = time.perf_counter()
            yield pb.SubmitRequest(batch_id=i, kind=pb.CREATE_TRANSFERS, records=rec)

    call = stub.Submit(requests(), timeout=max(1.0, deadline - time.monotonic()) + 30,
                       metadata=BATCHED_ANSWERS if batched else None)
    try:
        async for message in call:
            messages[0] += 1
            for resp in (message, *message.more):
                latencies.append(time.perf_counter() - sent_at.pop(resp.batch_id))
                slots.release()
                if resp.status.code:
                    refused[resp.status.message[:60]] += 1
                else:
                    codes.update(resp.results)
            if not sent_at and time.monotonic() > deadline:
                break
    finally:
        call.cancel()


async def _streams_async(target: str, per: list[list[bytes]], window: int, time_limit_s: float,
                         batched: bool = True) -> dict[str, Any]:
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    messages = [0]
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.LedgerStub(channel)
        cpu0 = sum(os.times()[:2])
        t0 = time.perf_counter()
        deadline = time.monotonic() + time_limit_s
        await asyncio.gather(*(_one_stream(stub, p, window, deadline, latencies, codes, refused, batched, messages)
                               for p in per))
        elapsed = time.perf_counter() - t0
    return {"latencies": latencies, "codes": dict(codes), "refused": dict(refused), "seconds": elapsed,
            "messages": messages[0],
            "cpu_s": sum(os.times()[:2]) - cpu0}


def _proc_main(target: str, per: list[list[bytes]], window: int, time_limit_s: float, batched: bool,
               start: Any, out: Any) -> None:
    start.wait()
    out.put(asyncio.run(_streams_async(target, per, window, time_limit_s, batched)))


def _run_procs(target: str, per: list[list[bytes]], window: int, time_limit_s: float,
               procs: int, batched: bool) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")  # no grpc state inherited from this process
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_proc_main, args=(target, per[i::procs], window, time_limit_s, batched, start, out),
                           daemon=True) for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let every process import and reach the start line before timing
    start.set()
    try:
        return [out.get(timeout=time_limit_s + 90) for _ in workers]
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()


def run_streams(target: str, records: bytes, streams: int = STREAMS, window: int = WINDOW,
                time_limit_s: float = 10.0, procs: int = PROCS, batched: bool = True) -> dict[str, Any]:
    """Spread ``records`` (one payment each) over ``streams`` concurrent Submit streams in ``procs``
    client processes (1: in this process)."""
    n = len(records) // TRANSFER_SIZE
    per = [[records[i * TRANSFER_SIZE:(i + 1) * TRANSFER_SIZE] for i in range(s, n, streams)]
           for s in range(streams)]
    if procs <= 1:
        parts = [asyncio.run(_streams_async(target, per, window, time_limit_s, batched))]
    else:
        parts = _run_procs(target, per, window, time_limit_s, procs, batched)
    latencies = [x for p in parts for x in p["latencies"]]
    codes: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    for p in parts:
        codes.update({int(k): v for k, v in p["codes"].items()})
        refused.update(p["refused"])
    elapsed = max(p["seconds"] for p in parts)
    acked = sum(codes.values())
    per_message = len(latencies) / max(1, sum(p["messages"] for p in parts))
    return {"streams": streams, "window": window, "payments_per_request": 1, "batched_answers": batched,
            "client_processes": max(1, procs),
            "client_cpu_s": round(sum(p["cpu_s"] for p in parts), 2), "transfers": acked,
            "ok": codes.get(int(Result.OK), 0),
            "answers_per_message": round(per_message, 2), "seconds": elapsed,
            "tx_per_s": acked / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "results": {Result(c).name.lower(): k for c, k in codes.items()}, "refused_batches": dict(refused)}


def main(argv: list[str] | None = None) -> int:
    from bench.region import transfer_stream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="node HOST:PORT (plaintext; the leader of a region)")
    ap.add_argument("--streams", type=int, default=STREAMS)
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--procs", type=int, default=PROCS, help="client processes sharing the streams (1: this one)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--payments", type=int, default=100_000, help="at most this many payments")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--one-answer-per-message", action="store_true",
                    help="do not ask for batched answers (one response message per request, as old clients)")
    args = ap.parse_args(argv)
    recs = transfer_stream(args.payments, seed=args.seed, first_id=(1 << 64) + (1 << 44))
    print(json.dumps(run_streams(args.target, recs, args.streams, args.window, args.seconds, args.procs,
                                 not args.one_answer_per_message),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
