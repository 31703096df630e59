"""Scale benchmark: millions of transfers into one node — does it slow down as the ledger grows?

Run: ``make bench-scale`` (10M transfers) or ``python -m bench.scale --transfers 2000000``.

One real node process (durable LMDB) on 127.0.0.1, the workload of bench/region.py (10k funded,
debit-limited accounts, uniform random transfers, unique ids), streamed in batches of 8189, one
chunk (default one million transfers) at a time. Each chunk's transfers are generated before it is
timed. Per chunk: transfers/s, p50/p99 batch acknowledgement latency, the disk bytes per
transfer (allocated blocks of the data directory ÷ transfers so far, and the chunk's increment), and
the node's resident memory after the chunk (/proc/PID/status: RSS, anonymous, file-backed; peak RSS).

Noise control: the machine is shared, so after every chunk a fixed *probe* runs — BLAKE3 + LMDB put
of the same 100k records into a fresh durable LMDB, one commit per 8189 — and each chunk's rate is
also given as a ratio to the probe measured right after it. The degradation from the first to the
last chunk is reported raw and probe-normalised (target ≤ 10%).

Results: a rich progress display, a table, JSON and a PNG under bench/results/ (``scale-*``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.region import ACCOUNTS, connect, rss_snapshot, run_stream, setup_ledger, single_node, split, wide_console
from bench.report import fmt_ms, fmt_rate, machine, write_results
from clients.workload import TransferGenerator
from ledger.codec import TRANSFER_SIZE


def disk_bytes(path: Path) -> int:
    """Allocated bytes (st_blocks) of every file under ``path`` — sparse LMDB maps count as used."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


class Probe:
    """A fixed amount of bare work (hash + durable LMDB put) to track the machine's speed over time."""

    def __init__(self, tmp: Path, n: int = 100_000) -> None:
        self.tmp = tmp
        self.records, _ = TransferGenerator(ACCOUNTS, seed=5).records(n)

    def run(self, repeats: int = 3) -> float:
        """Best of ``repeats`` (the least disturbed run estimates the machine's speed best)."""
        return max(self._once() for _ in range(repeats))

    def _once(self) -> float:
        import lmdb

        d = tempfile.mkdtemp(dir=self.tmp, prefix="probe-")
        env = lmdb.open(d, map_size=1 << 30, sync=True, metasync=True)
        recs = self.records
        step = 8189 * TRANSFER_SIZE
        index = 0
        t0 = time.perf_counter()
        for off in range(0, len(recs), step):
            chunk = recs[off : off + step]
            items = []
            for o in range(0, len(chunk), TRANSFER_SIZE):
                rec = chunk[o : o + TRANSFER_SIZE]
                items.append((index.to_bytes(8, "big"), rec + blake3.blake3(rec).digest()))
                index += 1
            with env.begin(write=True) as txn, txn.cursor() as cur:
                cur.putmulti(items, append=True)
        elapsed = time.perf_counter() - t0
        env.close()
        shutil.rmtree(d, ignore_errors=True)
        return index / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transfers", type=int, default=10_000_000, help="total transfers (default 10M)")
    ap.add_argument("--chunk", type=int, default=1_000_000, help="transfers per measured chunk (default 1M)")
    ap.add_argument("--batch", type=int, default=8189)
    ap.add_argument("--inflight", type=int, default=4, help="batches in flight")
    ap.add_argument("--time-limit", type=float, default=3600.0, help="stop after this many seconds in total")
    ap.add_argument("--map-size", type=int, default=64 << 30, help="node LMDB map size (sparse)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--results-dir", default=None, help="where to write JSON/PNG (default bench/results)")
    args = ap.parse_args(argv)
    if args.transfers <= 0 or args.chunk <= 0:
        ap.error("--transfers and --chunk must be positive")
    console = wide_console()
    chunks = [min(args.chunk, args.transfers - off) for off in range(0, args.transfers, args.chunk)]
    out: dict[str, Any] = {"machine": machine(), "transfers_planned": args.transfers, "chunk": args.chunk,
                           "batch": args.batch, "inflight": args.inflight, "chunks": []}
    deadline = time.monotonic() + args.time_limit
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-scale-") as tmp_s:
        tmp = Path(tmp_s)
        probe = Probe(tmp)
        out["probe_before"] = probe.run()
        pids: dict[str, int] = {}
        with single_node(tmp, extra=["--map-size", str(args.map_size)], pids=pids) as target, \
                connect(target) as client:
            setup_ledger(client)
            out["rss_mib_after_setup"] = rss_snapshot(pids).get("node")
            data_dir = tmp / "single"
            base_disk = disk_bytes(data_dir)
            out["disk_bytes_after_setup"] = base_disk
            gen = TransferGenerator(ACCOUNTS, seed=31)
            done = 0
            prev_disk = base_disk
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=False) as progress:
                total_task = progress.add_task("transfers", total=args.transfers, info="")
                for i, n in enumerate(chunks, 1):
                    if time.monotonic() > deadline:
                        console.print(f"[yellow]time limit reached after {done:,} transfers[/yellow]")
                        break
                    progress.update(total_task, info=f"generating chunk {i} …")
                    recs, _ = gen.records(n)
                    progress.update(total_task, info=f"chunk {i}/{len(chunks)}")
                    row = run_stream(client, split(recs, args.batch), args.inflight,
                                     max(10.0, deadline - time.monotonic()),
                                     on_ack=lambda k: progress.advance(total_task, k))
                    del recs
                    done += row["transfers"]
                    disk = disk_bytes(data_dir)
                    p = probe.run()
                    rec = {"million": i, "transfers": row["transfers"], "total": done, "tx_per_s": row["tx_per_s"],
                           "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "max_ms": row["max_ms"],
                           "results": row["results"], "disk_bytes": disk,
                           "disk_bytes_per_transfer": (disk - base_disk) / done if done else 0.0,
                           "chunk_disk_bytes_per_transfer": (disk - prev_disk) / row["transfers"]
                           if row["transfers"] else 0.0,
                           "probe_tx_per_s": p, "probe_ratio": row["tx_per_s"] / p if p else None,
                           "rss_mib": rss_snapshot(pids).get("node"),
                           "loadavg": list(os.getloadavg())}
                    prev_disk = disk
                    out["chunks"].append(rec)
                    progress.update(total_task, info=f"last chunk {row['tx_per_s']:,.0f} tx/s, p99 {row['p99_ms']:.0f}"
                                                     f" ms, {rec['disk_bytes_per_transfer']:.0f} B/tx")
                    if row["transfers"] < n:
                        console.print("[yellow]a chunk was cut short (time limit or refusals); stopping[/yellow]")
                        break
    rows = out["chunks"]
    if not rows:
        console.print("[red]no chunk completed[/red]")
        return 1
    first, last = rows[0], rows[-1]
    out["degradation_raw_pct"] = (1 - last["tx_per_s"] / first["tx_per_s"]) * 100
    out["degradation_normalised_pct"] = (1 - last["probe_ratio"] / first["probe_ratio"]) * 100
    out["p99_first_last_ms"] = [first["p99_ms"], last["p99_ms"]]
    out["trend_pct_per_million"] = trend_pct_per_million(rows)
    out["target_degradation_pct"] = 10.0
    console.print(render(out))
    path = write_results("scale", out, args.results_dir)
    console.print(f"wrote {path}")
    if not args.no_plot:
        from bench.plot import plot_scale

        png = plot_scale(out, path.with_suffix(".png"))
        console.print(f"wrote {png}")
    return 0


def trend_pct_per_million(rows: list[dict[str, Any]]) -> float:
    """Least-squares slope of transfers/s over ledger size, in % of the mean per million transfers
    (less sensitive to one noisy chunk than first vs last)."""
    if len(rows) < 2:
        return 0.0
    xs = [r["total"] / 1e6 for r in rows]
    ys = [r["tx_per_s"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return 100 * slope / my if my else 0.0


def _rss_cell(m: dict[str, float] | None) -> str:
    return f"{m['rss']:.0f} ({m['anon']:.0f} / {m['file']:.0f})" if m else "-"


def render(out: dict[str, Any]) -> Table:
    t = Table(title=f"one node, {out['chunks'][-1]['total']:,} transfers in batches of {out['batch']} "
                    "(chunk rate also ÷ a fixed probe run right after it)")
    for col in ("chunk", "transfers so far", "tx/s", "p50 / p99 ms", "disk B/transfer (cum / chunk)",
                "probe tx/s", "tx/s ÷ probe", "vs chunk 1 (raw / norm.)", "node RSS MiB (anon / file)"):
        t.add_column(col, justify="right")
    f = out["chunks"][0]
    for r in out["chunks"]:
        t.add_row(str(r["million"]), f"{r['total']:,}", fmt_rate(r["tx_per_s"]),
                  f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}",
                  f"{r['disk_bytes_per_transfer']:.0f} / {r['chunk_disk_bytes_per_transfer']:.0f}",
                  fmt_rate(r["probe_tx_per_s"]), f"{r['probe_ratio']:.4f}",
                  f"{r['tx_per_s'] / f['tx_per_s']:.2f} / {r['probe_ratio'] / f['probe_ratio']:.2f}",
                  _rss_cell(r.get("rss_mib")))
    t.caption = (f"degradation first → last chunk (negative = faster): raw {out['degradation_raw_pct']:.1f}%, "
                 f"probe-normalised {out['degradation_normalised_pct']:.1f}% (target ≤ 10%); linear trend "
                 f"{out['trend_pct_per_million']:+.2f}% per million; p99 {out['p99_first_last_ms'][0]:.0f} → "
                 f"{out['p99_first_last_ms'][1]:.0f} ms")
    return t


if __name__ == "__main__":
    sys.exit(main())
