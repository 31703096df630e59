"""The risk journal's row build and fold by the shape of the pairs, in one process (per CPU-second):
pairs spread over many payers (``bench.rules``' workload: 10k accounts, random pairs) against the same
number of pairs of a single payer (a payout account paying thousands of distinct payees), and against
pair keys with random 128-bit ids. The C sort orders keys by their first 8 bytes, then each run of keys
sharing them by the next 8, and so on (ledger/_native/risk_table_type.c ``sort_keys``), so the shapes
should cost about the same; an insertion sort of such runs made the single payer quadratic.

    .venv/bin/python -m bench.fold_shape [--rounds N] [--pairs N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from ledger import risk, risk_log

ROWS = 7  # a fold of bench.rules' workload reads about 7 rows


def _pairs(shape: str, n: int, rnd: random.Random) -> list[bytes]:
    def acct(i: int) -> bytes:
        return i.to_bytes(16, "little")
    if shape == "spread":
        return [acct(rnd.randint(1, 10_000)) + acct(rnd.randint(1, 10_000)) for _ in range(n)]
    if shape == "one payer":
        return [acct(7) + rnd.getrandbits(128).to_bytes(16, "little") for _ in range(n)]
    return [rnd.getrandbits(128).to_bytes(16, "little") + rnd.getrandbits(128).to_bytes(16, "little")
            for _ in range(n)]


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=8000, help="pairs per block row (default 8000)")
    args = ap.parse_args(argv)
    if risk.RiskTable is None:
        raise SystemExit("the C risk table is not built (make setup)")
    rnd = random.Random(1)
    table = risk.RiskTable(64, 64)
    shapes = ("spread", "one payer", "random ids")
    out: dict[str, tuple[float, float]] = {}
    for shape in shapes:
        blocks = [set(_pairs(shape, args.pairs, rnd)) for _ in range(ROWS)]

        def journal(blocks: list[set[bytes]] = blocks) -> list[bytes | None]:
            got = []
            for paid in blocks:
                table.begin(lambda k: None, lambda k: None, lambda ks: [None] * len(ks))
                got.append(table.journal({}, paid))
                table.abort()
            return got
        rows = [r for r in journal() if r is not None]
        assert table.fold(rows) == risk_log.fold(rows)
        out[shape] = (_best(journal, args.rounds) / ROWS, _best(lambda rows=rows: table.fold(rows), args.rounds))
    print(f"risk journal by pair shape: {ROWS} rows x {args.pairs} pairs, best of {args.rounds} (CPU ms)")
    print(f"  {'shape':<12} {'row build':>10} {'fold':>9} {'fold / spread':>14}")
    for shape in shapes:
        j, f = out[shape]
        print(f"  {shape:<12} {1e3 * j:>10.2f} {1e3 * f:>9.2f} {f / out['spread'][1]:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
