"""What a fold's new payer–payee pairs cost as the stored pairs grow: the pair runs (ledger/pair_runs.py)
against the old per-pair B-tree inserts into ``risk_pairs``, measured in the same run (CPU ns per pair).

Old: a fold puts the journal's distinct pairs into ``risk_pairs`` (an LMDB B-tree keyed by debit id ‖
credit id), sorted, no-overwrite. While the table is small, neighbouring new pairs share leaf pages; once
it holds many more leaf pages than a fold has pairs, almost every new pair copies a whole 4 KiB page and
the commit writes it. New: the fold writes its pairs as one sorted run (32 KiB chunks appended at the end
of ``pair_runs``) and merges runs by the binary-counter rule, so a pair is rewritten O(log n) times in
sequential chunks, never looked up. Two fresh durable stores get the same random pairs in folds of
``--batch`` pairs (its runs as real folds leave them; the
fill's total cost per pair is the amortised figure, merges included). At each size both then take
``--folds`` more folds of new random pairs: puts and commit (and, new, merges and the new run's filter).

Lookups (``--lookup-at``, default 1M pairs): a present and an absent pair, per lookup: the old one
``get`` on ``risk_pairs``, the new one the C RiskTable's getter (PairRuns.getter: the per-run filters in
one C call, a chunk read only on a filter hit), filters built beforehand (as a running node has them).

    .venv/bin/python -m bench.pair_scale [--sizes 0,100000,300000,1000000,3000000] [--batch 56000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from itertools import repeat
from pathlib import Path
from typing import Any

from bench.report import write_results
from ledger import pair_runs
from ledger.lmdb_store import LmdbStore
from ledger.pair_runs import PairRuns, add_run
from ledger.schema import Table

LOOKUPS = 20_000  # per kind, per layout


def _pairs(rnd: random.Random, n: int) -> list[bytes]:
    return sorted(rnd.getrandbits(256).to_bytes(32, "little") for _ in range(n))


class Layouts:
    """The two stores, filled with the same pairs; a sample of the stored ones for lookups."""

    def __init__(self, root: str, batch: int) -> None:
        self.old = LmdbStore(str(Path(root) / "old"), 1 << 35)
        self.new = LmdbStore(str(Path(root) / "new"), 1 << 35)
        self.batch = batch
        self.runs: PairRuns | None = None
        self.total = 0
        self.fill_cpu_new = 0.0
        self.filled = 0
        self.sample: list[bytes] = []

    def fill(self, rnd: random.Random, size: int) -> None:
        while self.total < size:  # fold-sized batches of random pairs, the same into both
            pairs = _pairs(rnd, min(self.batch, size - self.total))
            self.sample.extend(rnd.sample(pairs, min(len(pairs), 64)))
            with self.old.write() as w:
                w.put_many(Table.RISK_PAIRS, zip(pairs, repeat(b"")), overwrite=False)
            c0 = time.process_time()
            with self.new.write() as w:
                self.runs = add_run(w, b"".join(pairs), self.runs)
            self.fill_cpu_new += time.process_time() - c0
            self.total += len(pairs)
            self.filled += len(pairs)

    def fold_old(self, new: list[bytes]) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        with self.old.write() as w:
            w.put_many(Table.RISK_PAIRS, zip(new, repeat(b"")), overwrite=False)
        return time.process_time() - c0, time.perf_counter() - t0

    def fold_new(self, new: list[bytes]) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        with self.new.write() as w:
            self.runs = add_run(w, b"".join(new), self.runs)
        return time.process_time() - c0, time.perf_counter() - t0

    def close(self) -> None:
        self.old.close()
        self.new.close()


def _per_lookup(fn: Any, keys: list[bytes]) -> float:
    t0 = time.process_time()
    for k in keys:
        fn(k)
    return 1e9 * (time.process_time() - t0) / len(keys)


def lookups(lay: Layouts, rnd: random.Random) -> dict[str, float]:
    """CPU ns per lookup of a present and an absent pair, old and new (the same keys)."""
    present = [rnd.choice(lay.sample) for _ in range(LOOKUPS)]
    absent = [rnd.getrandbits(256).to_bytes(32, "little") for _ in range(LOOKUPS)]
    out: dict[str, float] = {}
    with lay.old.read() as txn:
        get = txn.getter(Table.RISK_PAIRS)
        assert all(get(k) is not None for k in present[:100]) and all(get(k) is None for k in absent[:100])
        out["old_present_ns"], out["old_absent_ns"] = _per_lookup(get, present), _per_lookup(get, absent)
    with lay.new.read() as txn:
        runs = PairRuns.read(txn, lay.runs.filters if lay.runs is not None else None)
        getter = runs.getter(txn)  # builds any missing filter now, untimed
        assert all(getter(k) is not None for k in present[:100]) and all(getter(k) is None for k in absent[:100])
        out["new_present_ns"], out["new_absent_ns"] = _per_lookup(getter, present), _per_lookup(getter, absent)
        out["runs"] = len(runs.runs)
        out["filter_bytes"] = sum(f.nbytes for f in runs.filter_tuple(txn) if f is not None)
    return out


def measure(sizes: list[int], batch: int, folds: int, lookup_at: int, seed: int = 1) -> dict[str, Any]:
    rnd = random.Random(seed)
    rows, look = [], None
    with tempfile.TemporaryDirectory() as d:
        lay = Layouts(d, batch)
        try:
            for size in sorted(sizes):
                lay.fill(rnd, size)
                stored = lay.total  # at least size: the timed folds of the sizes before added theirs
                if size == lookup_at:
                    look = lookups(lay, rnd) | {"table_pairs": stored}
                old_cpu = new_cpu = old_wall = new_wall = new_worst = 0.0
                for _ in range(folds):  # alternated: the machine's noise hits both alike
                    new = _pairs(rnd, batch)
                    lay.sample.extend(rnd.sample(new, 64))
                    oc, ow = lay.fold_old(new)
                    nc, nw = lay.fold_new(new)
                    old_cpu, old_wall, new_cpu, new_wall = old_cpu + oc, old_wall + ow, new_cpu + nc, new_wall + nw
                    new_worst = max(new_worst, nc)
                    lay.total += batch
                n = folds * batch
                with lay.new.read() as txn:
                    nruns = len(pair_runs.directory(txn))
                rows.append({"table_pairs": stored, "old_ns": 1e9 * old_cpu / n, "new_ns": 1e9 * new_cpu / n,
                             "old_wall_ns": 1e9 * old_wall / n, "new_wall_ns": 1e9 * new_wall / n,
                             "new_worst_fold_ns": 1e9 * new_worst / batch, "runs": nruns,
                             "fill_amortised_new_ns": 1e9 * lay.fill_cpu_new / lay.filled if lay.filled else 0.0})
        finally:
            lay.close()
    return {"rows": rows, "lookups": look}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,100000,300000,1000000,3000000",
                    help="stored pairs to measure at (comma separated)")
    ap.add_argument("--batch", type=int, default=56_000, help="new pairs per fold (bench.rules' folds: ~56k)")
    ap.add_argument("--folds", type=int, default=4, help="timed folds per size, each layout (alternated)")
    ap.add_argument("--lookup-at", type=int, default=1_000_000, help="stored pairs at the lookup figure")
    ap.add_argument("--results-dir", default=None, help="where the JSON goes (default bench/results)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {0})
    got = measure(sizes, args.batch, max(1, min(args.folds, 50)), args.lookup_at)
    base = got["rows"][0]["old_ns"]
    print(f"a fold's {args.batch:,} new pairs, by stored pairs (CPU ns per new pair, mean of {args.folds} folds "
          "each, alternated; ratios in this run)")
    print(f"  {'stored':>10} {'old B-tree':>10} {'vs empty':>8} {'runs':>7} {'new/old':>8} {'worst fold':>10} "
          f"{'#runs':>5} {'fill avg':>8}")
    for r in got["rows"]:
        print(f"  {r['table_pairs']:>10,} {r['old_ns']:>10.0f} {r['old_ns'] / base:>8.2f} {r['new_ns']:>7.0f} "
              f"{r['new_ns'] / r['old_ns']:>8.2f} {r['new_worst_fold_ns']:>10.0f} {r['runs']:>5} "
              f"{r['fill_amortised_new_ns']:>8.0f}")
    look = got["lookups"]
    if look is not None:
        print(f"lookups at {look['table_pairs']:,} stored pairs (CPU ns per lookup; new: {look['runs']} runs, "
              f"{look['filter_bytes'] / 1e6:.1f} MB of filters):")
        for kind in ("present", "absent"):
            o, n = look[f"old_{kind}_ns"], look[f"new_{kind}_ns"]
            print(f"  {kind:>8}: old get {o:>6.0f}  new {n:>6.0f}  new/old {n / o:.2f}")
    result: dict[str, Any] = {"batch": args.batch, "folds": args.folds, **got}
    print(f"wrote {write_results('pair_scale', result, args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
