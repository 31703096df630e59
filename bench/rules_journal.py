"""The risk journal's effect on the rules apply, A/B in one process: ``bench.rules``' 20-rule apply with
the journal (``ledger.risk_log.FOLD_BLOCKS`` = 16, the default) and with every block folding (1: the
layout without a journal, each block's risk rows and pairs written into ``risk`` / ``risk_pairs``),
alternated per round, each against the 0-rule apply of the same round (per CPU-second of this process).

    .venv/bin/python -m bench.rules_journal [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse

from bench.rules import _workload, run_apply
from ledger import risk_log
from ledger.note import Signer

ACCOUNTS = 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    blocks, per_block = (5, 4000) if args.quick else (20, 8000)
    batches = _workload(ACCOUNTS, blocks, per_block, 1)
    operator = Signer.generate("bench-operator")
    default = risk_log.FOLD_BLOCKS
    ratios = []
    try:
        for r in range(args.rounds):
            base = run_apply(0, batches, ACCOUNTS, operator)[1]
            got = {}
            for k in (default, 1) if r % 2 == 0 else (1, default):  # alternated: noise hits both alike
                risk_log.FOLD_BLOCKS = k
                got[k] = run_apply(20, batches, ACCOUNTS, operator)[1]
            ratios.append(got[default] / got[1])
            print(f"round {r + 1}: 0 rules {base:,.0f} tx/CPU-s; 20 rules journal {got[default]:,.0f} "
                  f"(drop {100 * (1 - got[default] / base):.1f}%), without {got[1]:,.0f} "
                  f"(drop {100 * (1 - got[1] / base):.1f}%), journal / without {ratios[-1]:.3f}")
    finally:
        risk_log.FOLD_BLOCKS = default
    ratios.sort()
    print(f"journal / without, median of {len(ratios)}: {ratios[len(ratios) // 2]:.3f}")


if __name__ == "__main__":
    main()
