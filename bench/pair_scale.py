"""What a fold's new payer–payee pairs cost as ``risk_pairs`` grows (per CPU-second of this process).

A fold (ledger/risk_log.py) puts the journal's distinct pairs into ``risk_pairs`` (an LMDB B-tree keyed by
debit id ‖ credit id) in one write transaction, sorted. While the table is small, neighbouring new pairs
share leaf pages; once it holds many more leaf pages than a fold has pairs, almost every new pair
copies a whole 4 KiB page (LMDB copies a page on its first change in a transaction) and the commit
writes it. ``bench.rules`` starts from an empty table, so it does not see this; this bench fills a
fresh durable store to each size with random pairs (sequential appends), then times one fold-sized
batch of new random pairs: the puts and the commit, per pair, and as a ratio to the empty table
measured in the same run.

    .venv/bin/python -m bench.pair_scale [--sizes 0,100000,300000,1000000,3000000] [--batch 56000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from itertools import repeat
from typing import Any

from bench.report import write_results
from ledger.lmdb_store import LmdbStore
from ledger.schema import Table

FILL_STEP = 500_000  # pairs per filling transaction


def _pairs(rnd: random.Random, n: int) -> list[bytes]:
    return sorted(rnd.getrandbits(256).to_bytes(32, "little") for _ in range(n))


def measure(sizes: list[int], batch: int, seed: int = 1) -> list[dict[str, float]]:
    """Per table size: CPU ns per new pair for the puts and the commit, wall ns per pair, table pages."""
    rnd = random.Random(seed)
    out = []
    with tempfile.TemporaryDirectory() as d:
        store = LmdbStore(d, 1 << 35)
        total = 0
        for size in sorted(sizes):
            while total < size:  # filled in sorted steps: what the table holds, not how it got there
                step = min(FILL_STEP, size - total)
                with store.write() as w:
                    w.put_many(Table.RISK_PAIRS, zip(_pairs(rnd, step), repeat(b"")), overwrite=False)
                total += step
            new = _pairs(rnd, batch)
            c0, t0 = time.process_time(), time.perf_counter()
            with store.write() as w:
                w.put_many(Table.RISK_PAIRS, zip(new, repeat(b"")), overwrite=False)
                c1 = time.process_time()
            c2, t2 = time.process_time(), time.perf_counter()
            total += batch
            out.append({"table_pairs": size, "put_ns": 1e9 * (c1 - c0) / batch,
                        "commit_ns": 1e9 * (c2 - c1) / batch, "wall_ns": 1e9 * (t2 - t0) / batch})
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,100000,300000,1000000,3000000",
                    help="risk_pairs sizes to measure at (pairs, comma separated)")
    ap.add_argument("--batch", type=int, default=56_000, help="new pairs per fold (bench.rules' folds: ~56k)")
    ap.add_argument("--results-dir", default=None, help="where the JSON goes (default bench/results)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {0})
    rows = measure(sizes, args.batch)
    base = rows[0]["put_ns"] + rows[0]["commit_ns"]
    print(f"a fold's {args.batch:,} new pairs into risk_pairs, by table size (CPU ns per pair; ratio to the "
          "empty table in this run)")
    print(f"  {'table pairs':>12} {'puts':>8} {'commit':>8} {'CPU':>8} {'ratio':>7} {'wall':>8}")
    for r in rows:
        cpu = r["put_ns"] + r["commit_ns"]
        print(f"  {r['table_pairs']:>12,} {r['put_ns']:>8.0f} {r['commit_ns']:>8.0f} {cpu:>8.0f} {cpu / base:>7.2f} "
              f"{r['wall_ns']:>8.0f}")
    result: dict[str, Any] = {"batch": args.batch, "rows": rows}
    print(f"wrote {write_results('pair_scale', result, args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
