"""What a fold's new payer–payee pairs cost as the stored pairs grow: the pair runs (ledger/pair_runs.py)
against the old per-pair B-tree inserts into ``risk_pairs``, measured in the same run (CPU ns per pair).

Old: a fold puts the journal's distinct pairs into ``risk_pairs`` (an LMDB B-tree keyed by debit id ‖
credit id), sorted, no-overwrite. While the table is small, neighbouring new pairs share leaf pages; once
it holds many more leaf pages than a fold has pairs, almost every new pair copies a whole 4 KiB page and
the commit writes it. New: the fold writes its pairs as one sorted run (4 KiB chunks appended at the end
of ``pair_runs``) and merges runs four at a time (size-tiered, docs/formats.md §10.1), so a pair is
rewritten about log4(n / fold) times in sequential chunks, never looked up. Two fresh durable stores get
the same folds of ``--batch`` new random pairs, alternated (the new one's runs as real folds leave them):
puts and commit (new: also merges), CPU seconds of this process. At each size both take ``--folds`` timed folds (the new
layout's cost swings from fold to fold: most folds merge little, one in a while rewrites most pairs), and
the mean over *every* fold since the previous size is printed beside them: the amortised figure.

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
    """The two stores, given the same folds (alternated: the machine's noise hits both alike); every fold's
    CPU seconds are added to the current window's sums; a sample of the stored pairs for lookups."""

    def __init__(self, root: str, batch: int) -> None:
        self.old = LmdbStore(str(Path(root) / "old"), 1 << 35)
        self.new = LmdbStore(str(Path(root) / "new"), 1 << 35)
        self.batch = batch
        self.runs: PairRuns | None = None
        self.total = 0
        self.sample: list[bytes] = []
        self.window = {"old": 0.0, "new": 0.0, "pairs": 0}

    def fold(self, rnd: random.Random, n: int) -> tuple[float, float]:
        """One fold of ``n`` new random pairs into both layouts: (old CPU s, new CPU s)."""
        pairs = _pairs(rnd, n)
        self.sample.extend(rnd.sample(pairs, min(len(pairs), 64)))
        c0 = time.process_time()
        with self.old.write() as w:
            w.put_many(Table.RISK_PAIRS, zip(pairs, repeat(b"")), overwrite=False)
        c1 = time.process_time()
        with self.new.write() as w:
            self.runs = add_run(w, b"".join(pairs), self.runs)
        c2 = time.process_time()
        self.total += n
        self.window["old"] += c1 - c0
        self.window["new"] += c2 - c1
        self.window["pairs"] += n
        return c1 - c0, c2 - c1

    def fill(self, rnd: random.Random, size: int) -> None:
        while self.total < size:
            self.fold(rnd, min(self.batch, size - self.total))

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
        getter = runs.getter(txn)  # its first lookup (the check below, untimed) builds the missing filters
        assert all(getter(k) is not None for k in present[:100]) and all(getter(k) is None for k in absent[:100])
        out["new_present_ns"], out["new_absent_ns"] = _per_lookup(getter, present), _per_lookup(getter, absent)
        out["runs"] = len(runs.runs)
        out["filter_bytes"] = sum(f.nbytes for f in runs.filter_tuple(txn) if f is not None)
    return out


def measure(sizes: list[int], batch: int, folds: int, lookup_at: int, seed: int = 1) -> dict[str, Any]:
    """Per size: the timed folds' CPU ns per new pair (old, new: mean and worst fold) and both layouts'
    mean over every fold since the previous size (the window: the new layout's merges amortised over it)."""
    rnd = random.Random(seed)
    rows, look = [], None
    with tempfile.TemporaryDirectory() as d:
        lay = Layouts(d, batch)
        try:
            order = sorted(sizes)
            for k, size in enumerate(order):
                lay.fill(rnd, size)
                stored = lay.total  # at least size: the timed folds of the sizes before added theirs
                if size == lookup_at:
                    look = lookups(lay, rnd) | {"table_pairs": stored}
                room = (order[k + 1] - lay.total) // batch if k + 1 < len(order) else folds
                here = max(1, min(folds, room))  # the next size is not overshot (sizes 0, 100k: one fold)
                timed = [lay.fold(rnd, batch) for _ in range(here)]
                win = lay.window
                n = here * batch
                with lay.new.read() as txn:
                    nruns = len(pair_runs.directory(txn))
                rows.append({"table_pairs": stored, "folds": here, "old_ns": 1e9 * sum(o for o, _ in timed) / n,
                             "new_ns": 1e9 * sum(nw for _, nw in timed) / n,
                             "new_worst_fold_ns": 1e9 * max(nw for _, nw in timed) / batch, "runs": nruns,
                             "window_pairs": win["pairs"], "window_old_ns": 1e9 * win["old"] / win["pairs"],
                             "window_new_ns": 1e9 * win["new"] / win["pairs"]})
                lay.window = {"old": 0.0, "new": 0.0, "pairs": 0}
        finally:
            lay.close()
    return {"rows": rows, "lookups": look}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,100000,300000,1000000,3000000",
                    help="stored pairs to measure at (comma separated)")
    ap.add_argument("--batch", type=int, default=56_000, help="new pairs per fold (bench.rules' folds: ~56k)")
    ap.add_argument("--folds", type=int, default=8,
                    help="timed folds per size, each layout (alternated; fewer where the next size is closer)")
    ap.add_argument("--lookup-at", type=int, default=1_000_000, help="stored pairs at the lookup figure")
    ap.add_argument("--results-dir", default=None, help="where the JSON goes (default bench/results)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {0})
    got = measure(sizes, args.batch, max(1, min(args.folds, 50)), args.lookup_at)
    base = got["rows"][0]["old_ns"]
    print(f"a fold's {args.batch:,} new pairs, by stored pairs (CPU ns per new pair; each fold to both layouts, "
          "alternated; ratios in this run)")
    print(f"  {'':>10} | timed folds at this size (up to {args.folds}){'':>19} | every fold since the previous size")
    print(f"  {'stored':>10} | {'folds':>5} {'old':>6} {'÷empty':>6} {'new':>6} {'new/old':>7} {'worst new':>9} "
          f"{'#runs':>5} | {'pairs':>9} {'old':>6} {'new':>6} {'new/old':>7}")
    for r in got["rows"]:
        print(f"  {r['table_pairs']:>10,} | {r['folds']:>5} {r['old_ns']:>6.0f} {r['old_ns'] / base:>6.2f} "
              f"{r['new_ns']:>6.0f} {r['new_ns'] / r['old_ns']:>7.2f} {r['new_worst_fold_ns']:>9.0f} {r['runs']:>5} | "
              f"{r['window_pairs']:>9,} {r['window_old_ns']:>6.0f} {r['window_new_ns']:>6.0f} "
              f"{r['window_new_ns'] / r['window_old_ns']:>7.2f}")
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
