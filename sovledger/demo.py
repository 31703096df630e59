"""``make demo``: start a local node, stream micro-payments with live progress, then audit the result.

Steps: start one node on 127.0.0.1 (data under ./demo-data), create accounts for simulated PSPs
and merchants, stream transfers in batches with a progress bar and live throughput, print a summary
table (tx/s, p50/p99 batch latency, outcomes per result code), verify the latest signed checkpoint
and an inclusion proof for a random payment, and print the checkpoint.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.client import BatchRefused, LedgerClient
from clients.verify import verify_checkpoint_note, verify_inclusion_response
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind, Result

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def run_demo(transfers: int = 100_000, accounts: int = 1_000, data_dir: str = "demo-data",
             keep: bool = False) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.integration.nodeproc import NodeProcess, free_port

    console = Console()
    data = Path(data_dir).resolve()
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    node = NodeProcess(data / "node-1", port=free_port())
    console.print(Panel.fit("[bold]sovledger demo[/bold] — one node, micro-payments, signed checkpoints",
                            border_style="cyan"))
    with console.status("starting node …"):
        node.start()
    console.print(f"node-1 listening on [bold]{node.target}[/bold]  (log: {node.log_path})")
    try:
        return _run(console, node.target, transfers, accounts, node, keep)
    finally:
        if not keep:
            node.stop()


def _run(console: Console, target: str, transfers: int, accounts: int, node: Any, keep: bool) -> int:
    with LedgerClient(target) as client:
        client.wait_ready()
        res = client.submit_one(EventKind.CREATE_ACCOUNT, account_records(accounts))
        console.print(f"created {sum(r == 0 for r in res.results):,} accounts (ledger 840 = USD, scale 2)")
        gen = TransferGenerator(accounts, seed=int(time.time()))
        batch = 4096
        plan = [recs for recs, _ in gen.batches(transfers, batch)]
        sent_at: deque[float] = deque()
        lat: list[float] = []
        codes: Counter[str] = Counter()

        def batches() -> Any:
            for recs in plan:
                sent_at.append(time.perf_counter())
                yield (EventKind.CREATE_TRANSFER, recs, b"", b"")

        progress = Progress(TextColumn("[bold]streaming payments"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]:>10} tx/s"), TimeElapsedColumn(), console=console)
        t0 = time.perf_counter()
        done = 0
        with progress:
            task = progress.add_task("stream", total=transfers, rate="—")
            for r in client.submit_stream(batches(), inflight=8):
                lat.append(time.perf_counter() - sent_at.popleft())
                if isinstance(r, BatchRefused):
                    codes[f"refused ({r.code.name})"] += 1
                    continue
                for code in r.results:
                    codes[Result(code).name.lower()] += 1
                done += len(r.results)
                progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):,.0f}")
        elapsed = time.perf_counter() - t0

        table = Table(title="summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("transfers acknowledged (durable)", f"{done:,}")
        table.add_row("throughput", f"{done / elapsed:,.0f} tx/s")
        table.add_row("batch latency p50 / p99", f"{_pct(lat, 50) * 1000:.1f} / {_pct(lat, 99) * 1000:.1f} ms")
        for name, n in sorted(codes.items()):
            table.add_row(f"result: {name}", f"{n:,}")
        console.print(table)

        cp = client.checkpoint()
        verified = verify_checkpoint_note(cp.note, cp.verifier_key).origin
        idx = random.randrange(cp.tree_size)
        proof = client.inclusion_proof(index=idx, tree_size=cp.tree_size)
        verify_inclusion_response(proof, cp.root)
        console.print(f"[green]✓[/green] checkpoint signature verified ({verified}); "
                      f"inclusion proof for entry {idx} verified against root of size {cp.tree_size:,}")
        console.print(Panel(cp.note.rstrip(), title="latest signed checkpoint (C2SP signed note)"))
        if keep:
            console.print(f"node left running on {target}; stop it with: kill {node.proc.pid}")
    return 0
