"""Replication benchmark: a 3-node region (quorum-durable) beside a single node, in the same run.

Run: ``python -m bench.replication [--quick]``. All nodes and the load client share this machine's
two cores. For each setup: 10k accounts, uniform random transfers, batch sizes 100, 1000 and 8189
(bounded in count and time); transfers/s and p50/p99 acknowledgement latency per batch. Then, on
the region, a rate-limited run at half the batch-8189 rate to show latency below saturation.
Results: a table, and JSON under bench/results/. Speeds are compared as ratios (region ÷ single
node) because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.single_node import ACCOUNTS, RESULTS, ROOT, machine, percentile, stream_load
from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind


def _prepare(target: str) -> LedgerClient:
    client = LedgerClient(target, timeout_s=60)
    client.wait_ready(30)
    for off in range(0, ACCOUNTS, 8000):
        client.submit_one(EventKind.CREATE_ACCOUNT, account_records(min(8000, ACCOUNTS - off), first_id=1 + off))
    return client


def _rate_limited(client: LedgerClient, gen: TransferGenerator, rate: float, batch: int, seconds: float,
                  ) -> dict[str, Any]:
    """Send batches at ``rate`` transfers/s for ``seconds``; latency per batch (send → durable ack)."""
    pregen = [recs for recs, _ in gen.batches(int(rate * seconds) + batch, batch)]
    interval = batch / rate
    sent_at: deque[float] = deque()
    lat: list[float] = []
    start = time.perf_counter()

    def paced() -> Any:
        for i, recs in enumerate(pregen):
            due = start + i * interval
            if due - start > seconds:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at.append(time.perf_counter())
            yield (EventKind.CREATE_TRANSFER, recs, b"", b"")

    acked = 0
    for res in client.submit_stream(paced(), inflight=64):
        lat.append(time.perf_counter() - sent_at.popleft())
        acked += len(getattr(res, "results", []))
    elapsed = time.perf_counter() - start
    return {"batch": batch, "target_rate": rate, "transfers": acked, "tx_per_s": acked / elapsed,
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per batch size at most")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from sovledger.cluster import Cluster
    from tests.integration.nodeproc import NodeProcess

    console = Console()
    scale = 0.1 if args.quick else 1.0
    plan = [(100, int(60_000 * scale), 32), (1000, int(200_000 * scale), 8), (8189, int(400_000 * scale), 4)]
    out: dict[str, Any] = {"machine": machine(), "single": [], "region": [], "region_half_rate": None}
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-repl-") as tmp:
        node = NodeProcess(Path(tmp) / "single").start()
        try:
            client = _prepare(node.target)
            gen = TransferGenerator(ACCOUNTS, seed=11)
            for batch, total, inflight in plan:
                with console.status(f"single node: {total:,} transfers in batches of {batch} …"):
                    out["single"].append(stream_load(client, gen, total, batch, inflight, args.time_limit))
            client.close()
        finally:
            node.stop()
        cluster = Cluster(Path(tmp) / "region")
        cluster.create(3, "bench", [])
        for n in cluster.nodes:
            cluster.start(n)
        try:
            leader, _ = cluster.wait_leader(60)
            client = _prepare(leader.target)
            gen = TransferGenerator(ACCOUNTS, seed=12)
            for batch, total, inflight in plan:
                with console.status(f"3-node region: {total:,} transfers in batches of {batch} …"):
                    out["region"].append(stream_load(client, gen, total, batch, inflight, args.time_limit))
            half = out["region"][-1]["tx_per_s"] / 2
            with console.status(f"3-node region at half rate ({half:,.0f} tx/s) …"):
                out["region_half_rate"] = _rate_limited(client, gen, half, 1000, 6 if args.quick else 15)
            client.close()
        finally:
            cluster.stop_all()
    table = Table(title="replication: 3-node region (quorum fsync) vs single node, same run, same machine")
    for col in ("batch", "single tx/s", "single p50/p99 ms", "region tx/s", "region p50/p99 ms", "region ÷ single"):
        table.add_column(col, justify="right")
    for s, r in zip(out["single"], out["region"], strict=True):
        table.add_row(str(s["batch"]), f"{s['tx_per_s']:,.0f}", f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f}",
                      f"{r['tx_per_s']:,.0f}", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}",
                      f"{r['tx_per_s'] / s['tx_per_s']:.2f}×")
    h = out["region_half_rate"]
    table.add_row(f"{h['batch']} @ half rate", "", "", f"{h['tx_per_s']:,.0f}",
                  f"{h['p50_ms']:.0f} / {h['p99_ms']:.0f}", "")
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"replication-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
