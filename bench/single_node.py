"""Single-node benchmark: end-to-end transfers/s through gRPC vs a bare-components baseline.

Run with ``make bench`` (or ``python -m bench.single_node [--quick]``). One real node process on
127.0.0.1 with a durable LMDB store; 10k accounts; uniform random transfers; batch sizes
1, 100, 1000, 8189. In the same run, a bare baseline does the minimum any ledger must do with the
same bytes — protobuf parse, BLAKE3 hash per record, LMDB put, one durable commit per batch —
with no ledger logic, so the ratio says what the ledger itself costs. Speeds are reported as
ratios against that baseline: this machine is shared and noisy.

Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import blake3
import grpc
from rich.console import Console
from rich.table import Table

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import TRANSFER_SIZE
from ledger.types import EventKind, Result
from sovledger_pb import ledger_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ACCOUNTS = 10_000


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def stream_load(client: LedgerClient, gen: TransferGenerator, total: int, batch: int, inflight: int,
                time_limit_s: float) -> dict[str, Any]:
    """Stream ``total`` transfers in batches; bounded by count and by time."""
    pregen = [recs for recs, _ in gen.batches(total, batch)]
    sent_at: deque[float] = deque()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    deadline = time.monotonic() + time_limit_s

    def batches() -> Any:
        for recs in pregen:
            if time.monotonic() > deadline:
                return
            sent_at.append(time.perf_counter())
            yield (EventKind.CREATE_TRANSFER, recs, b"", b"")

    acked = 0
    t0 = time.perf_counter()
    for res in client.submit_stream(batches(), inflight=inflight):
        now = time.perf_counter()
        latencies.append(now - sent_at.popleft())
        if hasattr(res, "results"):
            acked += len(res.results)
            for r in set(res.results):
                name = Result(r).name.lower()
                codes[name] = codes.get(name, 0) + res.results.count(r)
        else:
            codes["refused"] = codes.get("refused", 0) + 1
    elapsed = time.perf_counter() - t0
    return {
        "batch": batch, "transfers": acked, "seconds": elapsed, "tx_per_s": acked / elapsed if elapsed else 0,
        "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
        "results": codes,
    }


def bare_baseline(total: int, batch: int, data_dir: str) -> dict[str, Any]:
    """parse + hash + LMDB put of the same bytes, one durable commit per batch, no ledger logic."""
    import lmdb

    gen = TransferGenerator(ACCOUNTS, seed=99)
    msgs = [pb.SubmitRequest(batch_id=i, kind=pb.CREATE_TRANSFERS, records=r).SerializeToString()
            for i, (r, _) in enumerate(gen.batches(total, batch))]
    env = lmdb.open(data_dir, map_size=4 << 30, sync=True, metasync=True, max_dbs=2)
    db = env.open_db(b"leaves")
    index = 0
    t0 = time.perf_counter()
    for raw in msgs:
        req = pb.SubmitRequest.FromString(raw)
        recs = req.records
        items = []
        for off in range(0, len(recs), TRANSFER_SIZE):
            rec = recs[off : off + TRANSFER_SIZE]
            items.append((index.to_bytes(8, "big"), rec + blake3.blake3(rec).digest()))
            index += 1
        with env.begin(write=True, db=db) as txn, txn.cursor() as cur:
            cur.putmulti(items, append=True)
    elapsed = time.perf_counter() - t0
    env.close()
    return {"batch": batch, "transfers": index, "seconds": elapsed, "tx_per_s": index / elapsed}


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per batch size at most")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.integration.nodeproc import NodeProcess

    console = Console()
    scale = 0.1 if args.quick else 1.0
    plan = [(1, int(3000 * scale) or 300, 64), (100, int(100_000 * scale), 16),
            (1000, int(300_000 * scale), 8), (8189, int(600_000 * scale), 4)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-") as tmp:
        node = NodeProcess(Path(tmp) / "node").start()
        try:
            with LedgerClient(node.target) as client:
                client.wait_ready()
                for off in range(0, ACCOUNTS, 8000):
                    n = min(8000, ACCOUNTS - off)
                    client.submit_one(EventKind.CREATE_ACCOUNT, account_records(n, first_id=1 + off))
                gen = TransferGenerator(ACCOUNTS, seed=7)
                for batch, total, inflight in plan:
                    with console.status(f"streaming {total:,} transfers in batches of {batch} …"):
                        rows.append(stream_load(client, gen, total, batch, inflight, args.time_limit))
        except grpc.RpcError as e:
            console.print(f"[red]node failed: {e}[/red]\n{node.log_text()[-2000:]}")
            return 1
        finally:
            node.stop()
        with console.status("bare baseline (parse + hash + LMDB put, durable) …"):
            base = bare_baseline(int(600_000 * scale), 8189, os.path.join(tmp, "bare"))
    table = Table(title="sovledger single node — durable, through gRPC, 10k accounts, uniform transfers")
    for col in ("batch", "transfers", "tx/s", "p50 batch ms", "p99 batch ms", "÷ bare baseline"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["batch"]), f"{r['transfers']:,}", f"{r['tx_per_s']:,.0f}", f"{r['p50_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", f"{r['tx_per_s'] / base['tx_per_s']:.2f}×")
    table.add_row("bare 8189", f"{base['transfers']:,}", f"{base['tx_per_s']:,.0f}", "", "", "1.00×")
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"single_node-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "bare_baseline": base,
                               "ratio_at_8189": rows[-1]["tx_per_s"] / base["tx_per_s"],
                               "median_tx_per_s": statistics.median(r["tx_per_s"] for r in rows)},
                              indent=2))
    console.print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
